#!/usr/bin/python3
"""torchrun for Debian's python3-torch 1.13 under Python 3.11 (docs/distributed.md).

Python 3.11 no longer lists the zero member of an IntFlag when iterating it, so torch 1.13's
Std.from_str("0") (the default --redirects and --tee) returns None and torchrun fails in to_map
before it starts a worker. This maps None to Std.NONE and runs torch.distributed.run.main().
Usage: /usr/bin/python3 scripts/torchrun.py --nproc_per_node 2 --no_python build/rlhf sft ...
"""
import sys

from torch.distributed.elastic.multiprocessing.api import Std

_from_str = Std.from_str.__func__


def _from_str_none_fixed(cls, vm):
    value = _from_str(cls, vm)
    if isinstance(value, dict):
        return {rank: cls.NONE if v is None else v for rank, v in value.items()}
    return cls.NONE if value is None else value


Std.from_str = classmethod(_from_str_none_fixed)

from torch.distributed.run import main  # noqa: E402  (after the fix)

if __name__ == "__main__":
    sys.exit(main())

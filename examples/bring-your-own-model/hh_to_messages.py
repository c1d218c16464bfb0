#!/usr/bin/env python3
"""Turn Anthropic HH-RLHF lines into the `messages` files the stages read.

HH-RLHF lines are {"chosen": DIALOGUE, "rejected": DIALOGUE}, each dialogue a string
"\\n\\nHuman: ...\\n\\nAssistant: ...". Both sides share every turn but the last assistant reply.
Writes, from consecutive slices of the input (so no conversation is in two files):

  OUT/sft.jsonl      {"messages": [user, assistant, ..., user, assistant(chosen)]}   (rlhf sft)
  OUT/pairs.jsonl    {"prompt": [msgs ending with a user turn],
                      "chosen": [{"role": "assistant", ...}],
                      "rejected": [{"role": "assistant", ...}]}       (rlhf reward, format messages)
  OUT/prompts.jsonl  {"messages": [msgs ending with a user turn]}      (rlhf ppo prompts)

A line is skipped (and counted) when a dialogue does not alternate Human/Assistant starting with
Human, a turn is empty, the two sides do not share the prompt, or the two replies are equal.
Standard library only.

  python3 hh_to_messages.py --input harmless-base-test.jsonl.gz --out DIR \\
      [--sft N] [--pairs N] [--prompts N] [--max-chars C]
"""
import argparse
import gzip
import json
import os
import re
import sys

TURN = re.compile(r"\n\n(Human|Assistant):")
ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_dialogue(text):
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{"role": "user", "content": "a"}, ...] or None."""
    parts = TURN.split(text)
    if parts[0].strip():  # text before the first turn marker
        return None
    messages = []
    for i in range(1, len(parts), 2):
        role, content = ROLE[parts[i]], parts[i + 1].strip()
        expected = "user" if len(messages) % 2 == 0 else "assistant"
        if role != expected or not content:
            return None
        messages.append({"role": role, "content": content})
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        return None
    return messages


def convert(line, max_chars):
    """One HH line -> (prompt messages, chosen reply, rejected reply) or None."""
    record = json.loads(line)
    chosen, rejected = parse_dialogue(record["chosen"]), parse_dialogue(record["rejected"])
    if chosen is None or rejected is None or chosen[:-1] != rejected[:-1]:
        return None
    prompt = chosen[:-1]
    c, r = chosen[-1]["content"], rejected[-1]["content"]
    if c == r:
        return None
    if max_chars:
        # Keep the end of the dialogue (the last user turn matters most) and the start of replies.
        while len(prompt) > 1 and sum(len(m["content"]) for m in prompt) > max_chars:
            prompt = prompt[2:]
        prompt = [dict(m, content=m["content"][-max_chars:]) for m in prompt]
        c, r = c[:max_chars], r[:max_chars]
        if c == r:
            return None
    return prompt, c, r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help="HH-RLHF .jsonl or .jsonl.gz")
    ap.add_argument("--out", required=True, help="folder for sft.jsonl, pairs.jsonl, prompts.jsonl")
    ap.add_argument("--sft", type=int, default=512, help="SFT conversations (first slice)")
    ap.add_argument("--pairs", type=int, default=512, help="reward pairs (next slice)")
    ap.add_argument("--prompts", type=int, default=256, help="PPO prompts (next slice)")
    ap.add_argument("--max-chars", type=int, default=0,
                    help="cap on each turn's characters, and on the prompt's (oldest turns "
                         "dropped); 0 = no cap")
    args = ap.parse_args()

    opener = gzip.open if args.input.endswith(".gz") else open
    os.makedirs(args.out, exist_ok=True)
    wanted = [("sft", args.sft), ("pairs", args.pairs), ("prompts", args.prompts)]
    files = {name: open(os.path.join(args.out, name + ".jsonl"), "w", encoding="utf-8")
             for name, _ in wanted}
    counts = {name: 0 for name, _ in wanted}
    skipped, stage = 0, 0
    with opener(args.input, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            while stage < len(wanted) and counts[wanted[stage][0]] >= wanted[stage][1]:
                stage += 1
            if stage == len(wanted):
                break
            try:
                got = convert(line, args.max_chars)
            except (ValueError, KeyError, TypeError) as e:
                sys.exit("%s:%d: not an HH-RLHF line (%s)" % (args.input, number, e))
            if got is None:
                skipped += 1
                continue
            prompt, chosen, rejected = got
            name = wanted[stage][0]
            if name == "sft":
                row = {"messages": prompt + [{"role": "assistant", "content": chosen}]}
            elif name == "pairs":
                row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                       "rejected": [{"role": "assistant", "content": rejected}]}
            else:
                row = {"messages": prompt}
            files[name].write(json.dumps(row, ensure_ascii=False) + "\n")
            counts[name] += 1
    for f in files.values():
        f.close()
    short = [name for name, n in wanted if counts[name] < n]
    print("hh_to_messages: %s; %d lines skipped" %
          (", ".join("%d %s" % (counts[n], n) for n, _ in wanted), skipped))
    if short:
        sys.exit("hh_to_messages: %s: too few usable lines for %s" % (args.input, ", ".join(short)))


if __name__ == "__main__":
    main()

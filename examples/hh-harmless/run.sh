#!/usr/bin/env bash
# Reward model on real human preferences: Anthropic HH-RLHF harmless-base (test split).
# Trains on the first 1,850 lines, reports pairwise accuracy on the last 462.
#   usage: examples/hh-harmless/run.sh RUN_DIR
#   env:   HH_DATA (default ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz relative to the
#          repository), RLHF (the rlhf executable, default build/rlhf)
# Downloads nothing. Baseline: preferring the shorter answer scores 55.3% on this data.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
run_dir="${1:?usage: $0 RUN_DIR}"
hh="${HH_DATA:-$repo/../shared/data/hh-rlhf/harmless-base-test.jsonl.gz}"
rlhf="${RLHF:-$repo/build/rlhf}"

[[ -f "$hh" ]] || { echo "run.sh: HH data not found: $hh (set HH_DATA)" >&2; exit 1; }
[[ -x "$rlhf" ]] || { echo "run.sh: rlhf executable not found: $rlhf (build it, or set RLHF)" >&2; exit 1; }
mkdir -p "$run_dir"
start=$(date +%s)

# 1. Split: first 1,850 lines train, last 462 test.
gzip -dc "$hh" > "$run_dir/all.jsonl"
head -n 1850 "$run_dir/all.jsonl" > "$run_dir/train.jsonl"
tail -n 462 "$run_dir/all.jsonl" > "$run_dir/test.jsonl"
rm -f "$run_dir/all.jsonl"

# 2. Tokenizer on the training text only (prompts + answers).
"$rlhf" reward corpus --pairs "$run_dir/train.jsonl" --format hh --out "$run_dir/corpus.txt"
"$rlhf" tokenizer train --input "$run_dir/corpus.txt" --vocab-size 2048 --out "$run_dir/tokenizer"

# 3. Reward model into RUN_DIR/reward (model folder: RUN_DIR/reward/model).
"$rlhf" reward train --config "$here/reward.pbtxt" --out "$run_dir/reward" \
  --train-file "$run_dir/train.jsonl" --tokenizer "$run_dir/tokenizer/tokenizer.model"

# 4. Held-out accuracy on the last 462 lines.
"$rlhf" reward eval --model "$run_dir/reward" --pairs "$run_dir/test.jsonl" --format hh --json \
  | tee "$run_dir/test_metrics.json"
end=$(date +%s)
acc=$(tail -n 1 "$run_dir/test_metrics.json" | sed -E 's/.*"accuracy":([0-9.eE+-]+).*/\1/')
echo "HH harmless held-out accuracy (last 462 pairs): $acc  (shorter-answer baseline 0.553); wall $((end - start))s"

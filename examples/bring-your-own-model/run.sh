#!/usr/bin/env bash
# Bring your own model: SFT -> reward model -> PPO from a Hugging Face model folder (config.json,
# *.safetensors, tokenizer.json, tokenizer_config.json) on HH-RLHF conversations.
#   usage: examples/bring-your-own-model/run.sh RUN_DIR
#   env:   MODEL        a Hugging Face model folder; unset: make_model.py writes a small
#                       random-weight Qwen2.5-style model into RUN_DIR/base (CPU, a few minutes)
#          TOKENIZER    with no MODEL: the folder holding Qwen2.5's tokenizer.json and
#                       tokenizer_config.json (default: make_model.py's, tests/tokenizer_ref)
#          HH_DATA      HH-RLHF .jsonl(.gz) (default ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz
#                       next to the repository)
#          RLHF         the rlhf executable (default build/rlhf)
#          DEVICE       cpu (default) | cuda | cuda:N;   DTYPE  fp32 (default) | bf16
#          LORA_RANK    > 0: every stage trains LoRA adapters of this rank (q, k, v, o, gate, up,
#                       down); the base weights stay frozen
#          SFT_STEPS, REWARD_STEPS, PPO_ITERATIONS   override the configs' lengths
#          N_SFT, N_PAIRS, N_PROMPTS, MAX_CHARS      how much data hh_to_messages.py writes
#          THREADS      torch threads per stage (0 = torch's choice)
# Downloads nothing. Everything lands in RUN_DIR (see README.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
run_dir="${1:?usage: $0 RUN_DIR}"
hh="${HH_DATA:-$repo/../shared/data/hh-rlhf/harmless-base-test.jsonl.gz}"
rlhf="${RLHF:-$repo/build/rlhf}"
device="${DEVICE:-cpu}"
dtype="${DTYPE:-fp32}"
lora_rank="${LORA_RANK:-0}"
threads="${THREADS:-0}"

[[ -f "$hh" ]] || { echo "run.sh: HH data not found: $hh (set HH_DATA)" >&2; exit 1; }
[[ -x "$rlhf" ]] || { echo "run.sh: rlhf executable not found: $rlhf (build it, or set RLHF)" >&2; exit 1; }
mkdir -p "$run_dir"
run_dir="$(cd "$run_dir" && pwd)"
start=$(date +%s)
stage() { echo "== $1 ($(($(date +%s) - start)) s)"; }

# 0. The base model: yours (MODEL), or a random-weight Qwen2.5-style one with the real tokenizer.
if [[ -n "${MODEL:-}" ]]; then
  base="$(cd "$MODEL" && pwd)"
else
  stage "make_model.py -> $run_dir/base"
  python3 "$here/make_model.py" --out "$run_dir/base" ${TOKENIZER:+--tokenizer "$TOKENIZER"}
  base="$run_dir/base"
fi

# 1. HH-RLHF -> messages: SFT conversations, reward pairs, PPO prompts (disjoint slices).
stage "hh_to_messages.py -> $run_dir/data"
python3 "$here/hh_to_messages.py" --input "$hh" --out "$run_dir/data" \
  --sft "${N_SFT:-512}" --pairs "${N_PAIRS:-512}" --prompts "${N_PROMPTS:-256}" \
  --max-chars "${MAX_CHARS:-300}"

# Each stage's config: the example's settings + this run's paths (+ LoRA, threads).
common="device: \"$device\"
dtype: \"$dtype\"
threads: $threads"
lora=""
if [[ "$lora_rank" -gt 0 ]]; then
  lora="lora { rank: $lora_rank alpha: $((2 * lora_rank)) targets: \"q\" targets: \"k\" targets: \"v\" targets: \"o\" targets: \"gate\" targets: \"up\" targets: \"down\" }"
fi
mkdir -p "$run_dir/configs"
{ cat "$here/sft.pbtxt"; echo "init_from: \"$base\""; echo "train_file: \"$run_dir/data/sft.jsonl\""
  echo "$common"; echo "$lora"; } >"$run_dir/configs/sft.pbtxt"
{ cat "$here/reward.pbtxt"; echo "init_from: \"$run_dir/sft/model\""
  echo "train_file: \"$run_dir/data/pairs.jsonl\""; echo "$common"; echo "$lora"; } \
  >"$run_dir/configs/reward.pbtxt"
{ cat "$here/ppo.pbtxt"; echo "policy: \"$run_dir/sft/model\""
  echo "reward_model: \"$run_dir/reward\""; echo "value_model: \"$run_dir/reward\""
  echo "prompts: \"$run_dir/data/prompts.jsonl\""; echo "tokenizer: \"$run_dir/sft/model\""
  echo "$common"; echo "$lora"; } \
  >"$run_dir/configs/ppo.pbtxt"

sft_flags=() reward_flags=() ppo_flags=()
[[ -n "${SFT_STEPS:-}" ]] && sft_flags+=(--steps "$SFT_STEPS" --eval-every "$SFT_STEPS")
[[ -n "${REWARD_STEPS:-}" ]] && reward_flags+=(--steps "$REWARD_STEPS" --eval-every "$REWARD_STEPS")
[[ -n "${PPO_ITERATIONS:-}" ]] && ppo_flags+=(--iterations "$PPO_ITERATIONS")

# 2. SFT from the base model: RUN_DIR/sft/model (native checkpoint + the tokenizer's files).
stage "rlhf sft -> $run_dir/sft"
"$rlhf" sft --config "$run_dir/configs/sft.pbtxt" --out "$run_dir/sft" "${sft_flags[@]}"

# 3. Reward model from the SFT model on messages pairs: RUN_DIR/reward.
stage "rlhf reward train -> $run_dir/reward"
"$rlhf" reward train --config "$run_dir/configs/reward.pbtxt" --out "$run_dir/reward" \
  "${reward_flags[@]}"

# 4. PPO: policy = SFT model, teacher = reward model, critic from the reward model; the prompts
#    are rendered with the chat template the SFT model folder carries.
stage "rlhf ppo -> $run_dir/ppo"
"$rlhf" ppo --config "$run_dir/configs/ppo.pbtxt" --out "$run_dir/ppo" "${ppo_flags[@]}"

# 5. A look at the last iteration's rollouts (the reply only: no template markup).
last=$(ls "$run_dir/ppo/rollouts/"iter-*.pb | sort | tail -n 1)
"$rlhf" replay "$last" --json >"$run_dir/last_rollouts.jsonl"
stage "done: $run_dir/ppo/model; last rollouts in $run_dir/last_rollouts.jsonl"

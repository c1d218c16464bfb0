#!/usr/bin/env bash
# The GPU check: build against the PyTorch wheel's libtorch and prove training and generation on
# the GPU. Runs on a machine with a GPU, the CUDA toolkit, python3 + torch (with its C++ headers
# and CMake files), a C++ compiler, cmake and ninja, and no internet or apt; the other build
# dependencies come as Debian packages fetched beforehand by scripts/device/fetch-deps.sh into
# .device-deps/ (carry that folder along).
#
#   bash scripts/device/check.sh                 the GPU check (about 8 minutes at most)
#   bash scripts/device/check.sh --cpu-dry-run   the same logic on a CPU Debian machine: unpack,
#                                                configure against Debian's libtorch with the
#                                                unpacked packages first, build a few targets,
#                                                run their tests and a quick CPU bench
#
# Steps (each time-boxed with `timeout`; one summary line each, also in $LOGS/summary.txt):
#   info       nvidia-smi, compiler, the wheel's torch version / CUDA / C++ ABI
#   unpack     dpkg-deb -x (or ar + tar) every .device-deps/*.deb into .device-prefix/
#   configure  cmake -G Ninja against torch.utils.cmake_prefix_path and the prefix
#   build      rlhf and the tests with all cores
#   bench      rlhf bench --device cuda --json, fp32 and bf16 ($LOGS/bench_fp32.json, bench_bf16.json)
#   byom       examples/bring-your-own-model on the GPU in bf16: a random-weight Qwen2.5-style Hugging
#              Face folder, SFT and reward a few steps, one PPO iteration on HH-RLHF conversation
#              prompts ($LOGS/byom/: PPO metrics, rollouts); --cpu-dry-run: on the CPU in fp32.
#              Its inputs (HH-RLHF harmless-base, Qwen2.5's tokenizer files) come from
#              $DEPS/byom/, where fetch-deps.sh copies them; SKIP without them
#   test       ctest -LE slow with RLHF_TEST_DEVICE=cuda (tests that train or generate use the GPU)
#   quickstart the quickstart pipeline on the GPU in bf16, one process per stage
#              ($LOGS/quickstart/summary.json, report.html)
# Everything is written under .device-out/ (RLHF_DEVICE_LOGS): a log per step, summary.txt; when
# OUT is set (the device tool), summary.txt, bench_*.json, quickstart_summary.json,
# quickstart_report.html, byom_ppo_metrics.jsonl, byom_rollouts.jsonl and logs.tar.gz (every log)
# are copied there (8 files: the tool's limit).
# Environment: OUT, RLHF_DEVICE_LOGS, RLHF_DEVICE_DEPS (.device-deps), RLHF_DEVICE_PREFIX (.device-prefix),
# RLHF_DEVICE_BUILD (build-device), RLHF_CHECK_BUDGET_S (480: later steps are skipped past it),
# RLHF_CHECK_SCALE (multiplies every step's limit),
# RLHF_CHECK_TARGETS (build targets; default: all), RLHF_CHECK_TESTS (ctest -R regex; default:
# all but the `slow` ones), JOBS (nproc).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
MODE=gpu
if [ "${1:-}" = "--cpu-dry-run" ]; then MODE=cpu; fi
# Logs and results go to $LOGS; what fits the device tool's return limits (8 files) is copied to
# $OUT at the end when OUT is set.
LOGS=${RLHF_DEVICE_LOGS:-$ROOT/.device-out}
DEPS=${RLHF_DEVICE_DEPS:-$ROOT/.device-deps}
PREFIX=${RLHF_DEVICE_PREFIX:-$ROOT/.device-prefix}
BUILD=${RLHF_DEVICE_BUILD:-$ROOT/build-device}
# Time limits are scaled by RLHF_CHECK_SCALE (default 1; 6 for --cpu-dry-run: small shared CPUs).
SCALE=${RLHF_CHECK_SCALE:-1}
if [ "$MODE" = cpu ]; then SCALE=${RLHF_CHECK_SCALE:-6}; fi
BUDGET=${RLHF_CHECK_BUDGET_S:-$((480 * SCALE))}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$LOGS"
SUMMARY="$LOGS/summary.txt"
: >"$SUMMARY"
T0=$(date +%s)
FAILED=0

# step NAME LIMIT_S FUNCTION ARGS...: runs the (exported) shell function in a child bash under
# `timeout`, output to $LOGS/NAME.log, and prints "NAME ok|FAIL(rc)|TIMEOUT|SKIP  seconds  note"
# (the note is what the function wrote with `note`). Skips when the budget is spent.
note() { echo "$*" >"$LOGS/.note"; }
step() {
  local name=$1 limit=$2
  shift 2
  local now left
  now=$(date +%s)
  left=$((BUDGET - (now - T0)))
  if [ "$left" -le 5 ]; then
    printf '%-10s %-9s %5ss  %s\n' "$name" SKIP 0 "budget of ${BUDGET}s spent" | tee -a "$SUMMARY"
    FAILED=1
    return 1
  fi
  limit=$((limit * SCALE))
  if [ "$limit" -gt "$left" ]; then limit=$left; fi
  local start rc status note_text
  rm -f "$LOGS/.note"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  note_text=$(cat "$LOGS/.note" 2>/dev/null)
  case $rc in
    0) status=ok ;;
    3) status=SKIP ;;  # a step with nothing to do here (a function's `return 3`)
    124 | 137) status=TIMEOUT ;;
    *) status="FAIL($rc)" ;;
  esac
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
    FAILED=1
    note_text="$note_text${note_text:+; }see $name.log: $(tail -n 1 "$LOGS/$name.log" | cut -c1-100)"
  fi
  printf '%-10s %-9s %5ss  %s\n' "$name" "$status" "$(($(date +%s) - start))" "$note_text" |
    tee -a "$SUMMARY"
  return $rc
}

# ---- the steps -----------------------------------------------------------------------------------

do_info() {
  echo "mode: $MODE"
  uname -a
  (nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true) 2>&1
  (c++ --version | head -1) 2>&1
  cmake --version | head -1
  ninja --version
  if [ "$MODE" = gpu ]; then
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
"gpu", torch.cuda.is_available(), "cxx11_abi", torch._C._GLIBCXX_USE_CXX11_ABI);
print("cmake_prefix_path", torch.utils.cmake_prefix_path)'
  fi
}

# Extracts one .deb into $PREFIX: dpkg-deb where there is one, else Python (a .deb is an `ar`
# archive holding data.tar.xz; tarfile reads xz without an xz program).
extract_deb() {
  local deb=$1
  if command -v dpkg-deb >/dev/null && [ -z "${RLHF_NO_DPKG:-}" ]; then
    dpkg-deb -x "$deb" "$PREFIX"
  else
    python3 - "$deb" "$PREFIX" <<'PY'
import io, sys, tarfile
deb, dest = sys.argv[1], sys.argv[2]
data = open(deb, "rb").read()
assert data[:8] == b"!<arch>\n", deb + ": not an ar archive"
pos = 8
while pos + 60 <= len(data):
    name = data[pos:pos + 16].decode().strip().rstrip("/")
    size = int(data[pos + 48:pos + 58].decode().strip())
    body = data[pos + 60:pos + 60 + size]
    if name.startswith("data.tar"):
        with tarfile.open(fileobj=io.BytesIO(body)) as t:
            # Absolute symlinks (docs) would point outside the prefix: leave them out.
            keep = [m for m in t.getmembers() if not (m.issym() and m.linkname.startswith("/"))]
            extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
            t.extractall(dest, members=keep, **extra)
        break
    pos += 60 + size + (size % 2)
else:
    sys.exit(deb + ": no data.tar member")
PY
  fi
}

do_unpack() {
  ls "$DEPS"/*.deb >/dev/null 2>&1 || {
    echo "no .deb files in $DEPS: run scripts/device/fetch-deps.sh on a Debian machine first"
    return 1
  }
  rm -rf "$PREFIX"
  mkdir -p "$PREFIX"
  for deb in "$DEPS"/*.deb; do
    echo "unpacking $(basename "$deb")"
    extract_deb "$deb" || return 1
  done
  "$PREFIX/usr/bin/protoc" --version  # runs with the unpacked libprotoc / libprotobuf
}

# The prefix's libraries (protoc's, SentencePiece's at run time) and programs first.
LIBDIR="$PREFIX/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

do_configure() {
  local torch_prefix="" extra=()
  if [ "$MODE" = gpu ]; then
    torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)') || return 1
    extra+=(-DRLHF_WITH_CUDA=ON)
    # Skip libtorch's GPU-architecture probe: compile for the GPU that is here.
    if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
      TORCH_CUDA_ARCH_LIST=$(python3 -c 'import torch; c = torch.cuda.get_device_capability();
print(f"{c[0]}.{c[1]}")' 2>/dev/null || echo 9.0)
      export TORCH_CUDA_ARCH_LIST
    fi
  fi
  rm -rf "$BUILD"
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRLHF_BUILD_BENCH=OFF \
    -DCMAKE_PREFIX_PATH="${torch_prefix:+$torch_prefix;}$PREFIX/usr" \
    -DCMAKE_LIBRARY_PATH="$LIBDIR" -DCMAKE_INCLUDE_PATH="$PREFIX/usr/include" \
    -DCMAKE_PROGRAM_PATH="$PREFIX/usr/bin" \
    -DProtobuf_PROTOC_EXECUTABLE="$PREFIX/usr/bin/protoc" \
    -DProtobuf_INCLUDE_DIR="$PREFIX/usr/include" \
    -DGTest_DIR="$LIBDIR/cmake/GTest" \
    -Dnlohmann_json_DIR="$PREFIX/usr/share/cmake/nlohmann_json" \
    "${extra[@]}" || return 1
  # Show which copy of each dependency CMake picked (the prefix's, not the system's).
  grep -E '^(Protobuf_LIBRARY_RELEASE|Protobuf_PROTOC_EXECUTABLE|RLHF_SPM_LIBRARY|SQLite3_LIBRARY|OPENSSL_CRYPTO_LIBRARY|ZLIB_LIBRARY_RELEASE|Boost_INCLUDE_DIR|GTest_DIR|nlohmann_json_DIR|Torch_DIR|RLHF_NCCL_INCLUDE_DIR):' \
    "$BUILD/CMakeCache.txt"
}

do_build() {
  if [ -n "${RLHF_CHECK_TARGETS:-}" ]; then
    # shellcheck disable=SC2086
    cmake --build "$BUILD" -j"$JOBS" --target $RLHF_CHECK_TARGETS
  else
    cmake --build "$BUILD" -j"$JOBS"
  fi
}

do_test() {
  local device=cpu
  if [ "$MODE" = gpu ]; then export RLHF_TEST_DEVICE=cuda; device=cuda; fi
  local only=()
  if [ -n "${RLHF_CHECK_TESTS:-}" ]; then only=(-R "$RLHF_CHECK_TESTS"); fi
  cd "$BUILD" && RLHF_NO_PROGRESS=1 ctest -j"$(((JOBS + 1) / 2))" -LE slow --timeout 240 \
    --output-on-failure --output-junit "$LOGS/ctest.xml" "${only[@]}"
  local rc=$?
  note "RLHF_TEST_DEVICE=$device; $(grep -E 'tests passed|tests failed' "$LOGS/test.log" | tail -1)"
  return $rc
}

do_bench() {
  if [ ! -x "$BUILD/rlhf" ]; then note "rlhf not built (RLHF_CHECK_TARGETS)"; return 3; fi
  local dtype=$1 device=cuda extra=()
  if [ "$MODE" = cpu ]; then device=cpu extra=(--quick --only train); fi
  "$BUILD/rlhf" bench --device "$device" --dtype "$dtype" --json "${extra[@]}" >"$LOGS/bench_$dtype.out" || return 1
  tail -n 1 "$LOGS/bench_$dtype.out" >"$LOGS/bench_$dtype.json"
  note $(python3 -c 'import json, sys; j = json.load(open(sys.argv[1]))
print(" ".join(f"{k}={j[k]:.0f}" for k in ("gemm_gflops", "gen_b1_cache", "gen_b32_cache",
      "gen_b256_cache", "train_tokens_per_s") if k in j))' "$LOGS/bench_$dtype.json" 2>/dev/null)
}

do_quickstart() {
  # The example config with one process per stage (one GPU) and every stage on the GPU in bf16.
  sed '/^processes {/d' examples/quickstart/pipeline.pbtxt >"$LOGS/quickstart_gpu.pbtxt"
  local run="$ROOT/runs/device-quickstart"
  rm -rf "$run"
  RLHF_NO_PROGRESS=1 "$BUILD/rlhf" pipeline run "$LOGS/quickstart_gpu.pbtxt" --run-dir "$run" \
    --device cuda --dtype bf16
  local rc=$?
  mkdir -p "$LOGS/quickstart"
  cp "$run"/summary.json "$run"/report.html "$run"/pipeline_state.json "$LOGS/quickstart/" 2>/dev/null
  note $(grep -E '^== .* done in' "$LOGS/quickstart.log" | sed 's/^== //; s/ done in /=/' | tr '\n' ' ')
  return $rc
}

# One bf16 PPO iteration of examples/bring-your-own-model (SFT and reward a few steps first).
do_byom() {
  local hh="$DEPS/byom/harmless-base-test.jsonl.gz" tok="$DEPS/byom/tokenizer-qwen2_5"
  if [ ! -f "$hh" ] || [ ! -f "$tok/tokenizer.json" ]; then
    note "no $hh or $tok/tokenizer.json (scripts/device/fetch-deps.sh copies them)"
    return 3
  fi
  if [ ! -x "$BUILD/rlhf" ]; then note "rlhf not built (RLHF_CHECK_TARGETS)"; return 3; fi
  local device=cuda dtype=bf16 run="$ROOT/runs/device-byom"
  if [ "$MODE" = cpu ]; then device=cpu dtype=fp32; fi
  rm -rf "$run"
  RLHF_NO_PROGRESS=1 RLHF="$BUILD/rlhf" HH_DATA="$hh" TOKENIZER="$tok" DEVICE="$device" \
    DTYPE="$dtype" N_SFT=32 N_PAIRS=32 N_PROMPTS=16 SFT_STEPS=5 REWARD_STEPS=5 PPO_ITERATIONS=1 \
    bash examples/bring-your-own-model/run.sh "$run" || return 1
  mkdir -p "$LOGS/byom"
  cp "$run/ppo/metrics.jsonl" "$LOGS/byom/ppo_metrics.jsonl" || return 1
  cp "$run/last_rollouts.jsonl" "$LOGS/byom/rollouts.jsonl" || return 1
  # Outcomes, not only the exit code: one PPO iteration with finite metrics, a full batch of
  # rollouts whose replies hold no chat-template markup.
  python3 - "$LOGS/byom" "$device" "$dtype" <<'PY' || return 1
import json, math, sys
d, device, dtype = sys.argv[1:]
metrics = [json.loads(l) for l in open(d + "/ppo_metrics.jsonl") if l.strip()]
assert len(metrics) == 1, "expected 1 PPO iteration, got %d" % len(metrics)
bad = [k for k, v in metrics[0].items() if v is None or (isinstance(v, float) and not math.isfinite(v))]
assert not bad, "non-finite PPO metrics: %s" % bad
rollouts = [json.loads(l) for l in open(d + "/rollouts.jsonl") if l.strip()]
assert len(rollouts) == 8, "expected 8 rollouts, got %d" % len(rollouts)
for r in rollouts:
    for mark in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert mark not in r["response_text"], "%s in a reply: %r" % (mark, r["response_text"])
m = metrics[0]
print("%s %s: score/mean %.3f kl/mean %.4f entropy/mean %.2f, %d rollouts" % (device, dtype,
      m.get("score/mean", float("nan")), m.get("kl/mean", float("nan")),
      m.get("entropy/mean", float("nan")), len(rollouts)))
PY
  note "$device $dtype; $(tail -n 1 "$LOGS/byom.log")"
}

export MODE LOGS DEPS PREFIX BUILD JOBS ROOT LIBDIR
export -f note do_info extract_deb do_unpack do_configure do_build do_test do_bench do_quickstart \
  do_byom

step info 30 do_info
step unpack 60 do_unpack
# Most informative first: the bench figures, one bf16 PPO iteration of the bring-your-own-model
# example, then the test suite, then the quickstart (which takes what is left of the budget).
step configure 90 do_configure && step build 300 do_build && {
  step bench-fp32 45 do_bench fp32
  step bench-bf16 45 do_bench bf16
  step byom 90 do_byom
  step test 120 do_test
  if [ "$MODE" = gpu ]; then step quickstart 300 do_quickstart; fi
}
printf '%-10s %-9s %5ss  %s\n' total "$([ $FAILED = 0 ] && echo ok || echo FAIL)" \
  "$(($(date +%s) - T0))" "logs and results in $LOGS" | tee -a "$SUMMARY"

# For the device tool (at most 8 files come back from $OUT): the summary, the bench figures, the
# quickstart's summary and report, the example's PPO metrics and rollouts, and every log in one
# archive.
if [ -n "${OUT:-}" ] && [ "$OUT" != "$LOGS" ]; then
  mkdir -p "$OUT"
  cp "$SUMMARY" "$OUT/summary.txt"
  for f in bench_fp32.json bench_bf16.json; do [ -f "$LOGS/$f" ] && cp "$LOGS/$f" "$OUT/"; done
  [ -f "$LOGS/quickstart/summary.json" ] && cp "$LOGS/quickstart/summary.json" "$OUT/quickstart_summary.json"
  [ -f "$LOGS/quickstart/report.html" ] && cp "$LOGS/quickstart/report.html" "$OUT/quickstart_report.html"
  [ -f "$LOGS/byom/ppo_metrics.jsonl" ] && cp "$LOGS/byom/ppo_metrics.jsonl" "$OUT/byom_ppo_metrics.jsonl"
  [ -f "$LOGS/byom/rollouts.jsonl" ] && cp "$LOGS/byom/rollouts.jsonl" "$OUT/byom_rollouts.jsonl"
  tar -czf "$OUT/logs.tar.gz" -C "$LOGS" --exclude=.note . 2>/dev/null
fi
exit $FAILED

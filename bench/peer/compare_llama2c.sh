#!/usr/bin/env bash
# Side-by-side decode speed: karpathy's llama2.c (run.c, not vendored here) against `rlhf bench`
# on the same model: d=256, 4 layers, 8 heads (8 kv heads), vocab 4096, SwiGLU hidden 704,
# max_seq_len 264, the bench's weights (`rlhf bench --export-llama2c`). See docs/performance.md,
# "Peer: llama2.c".
#
# Usage: bench/peer/compare_llama2c.sh PATH/TO/run.c [RLHF_BIN] [--runs N] [--threads N] [--json]
#   RLHF_BIN     the rlhf binary (default: build/rlhf at the repository root)
#   --runs N     rounds (default 5); each round runs, in this order: llama2.c 1 thread,
#                llama2.c 2 threads (OpenMP), rlhf gen_b1_cache --repeat 3 (default decode
#                threads, then RLHF_DECODE_THREADS=1), rlhf gen_b32_cache --repeat 3, so load
#                drifts hit both sides; medians over the rounds are reported
#   --threads N  passed to rlhf bench (default: libtorch's choice)
#   --json       also print one JSON object as the last stdout line
#
# run.c is compiled with the flags of llama2.c's Makefile target `runomp`, once without OpenMP
# (its `runfast` omits -march=native; both builds here have it, so they differ only in OpenMP):
#   gcc -Ofast -march=native run.c -lm -o run
#   gcc -Ofast -fopenmp -march=native run.c -lm -o runomp   (run with OMP_NUM_THREADS=2)
# and run as `run model.bin -z tokenizer.bin -n 136 -t 1.0 -p 1.0 -s <round>` (stdout to
# /dev/null; its "achieved tok/s" line on stderr is the figure). A preset OPENBLAS_CORETYPE is
# kept as it is (and reported).
set -euo pipefail

die() {
  echo "compare_llama2c: $*" >&2
  exit 2
}

repo_root="$(cd "$(dirname "$0")/../.." && pwd)"
run_c=""
rlhf_bin=""
runs=5
threads=""
json=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) [ $# -ge 2 ] || die "--runs: expected a number"; runs="$2"; shift 2 ;;
    --threads) [ $# -ge 2 ] || die "--threads: expected a number"; threads="$2"; shift 2 ;;
    --json) json=1; shift ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option '$1' (expected --runs N, --threads N, --json)" ;;
    *)
      if [ -z "$run_c" ]; then run_c="$1"
      elif [ -z "$rlhf_bin" ]; then rlhf_bin="$1"
      else die "unexpected argument '$1' (usage: $0 PATH/TO/run.c [RLHF_BIN] [--runs N] [--json])"
      fi
      shift ;;
  esac
done

[ -n "$run_c" ] || die "missing PATH/TO/run.c (llama2.c is not vendored: git clone https://github.com/karpathy/llama2.c)"
[ -f "$run_c" ] || die "run.c not found at '$run_c' (git clone https://github.com/karpathy/llama2.c, then pass llama2.c/run.c)"
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs: expected a positive integer, got '$runs'"
[ -z "$threads" ] || [[ "$threads" =~ ^[1-9][0-9]*$ ]] || die "--threads: expected a positive integer, got '$threads'"
command -v gcc >/dev/null || die "gcc not found (needed to build llama2.c's run.c; apt-get install gcc)"
rlhf_bin="${rlhf_bin:-$repo_root/build/rlhf}"
[ -x "$rlhf_bin" ] || die "rlhf binary not found or not executable at '$rlhf_bin' (build it: cmake --build build --target rlhf)"

work="$(mktemp -d "${TMPDIR:-/tmp}/compare_llama2c.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# --- build the peer ---------------------------------------------------------------------------
gcc -Ofast -march=native "$run_c" -lm -o "$work/run" 2>"$work/gcc.log" ||
  { cat "$work/gcc.log" >&2; die "gcc failed on '$run_c' (1-thread build)"; }
gcc -Ofast -fopenmp -march=native "$run_c" -lm -o "$work/runomp" 2>"$work/gcc.log" ||
  { cat "$work/gcc.log" >&2; die "gcc failed on '$run_c' (OpenMP build; libgomp missing?)"; }

# --- the model, in llama2.c's format ----------------------------------------------------------
"$rlhf_bin" bench --export-llama2c "$work/model" 2>"$work/export.log" ||
  { cat "$work/export.log" >&2; die "'$rlhf_bin bench --export-llama2c' failed"; }

thread_args=()
[ -z "$threads" ] || thread_args=(--threads "$threads")

# Runs `rlhf bench` with the given arguments; prints its JSON line (the last stdout line).
rlhf_json() {
  local out
  out="$("$rlhf_bin" bench "$@" ${thread_args[@]+"${thread_args[@]}"} --json 2>"$work/rlhf.log")" ||
    { cat "$work/rlhf.log" >&2; die "'$rlhf_bin bench $*' failed"; }
  printf '%s\n' "$out" | tail -n 1
}

# The number under "key" in a one-line JSON object (nlohmann's compact dump).
json_number() {
  local v
  v="$(printf '%s' "$1" | sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p")"
  [ -n "$v" ] || die "no number '$2' in: $1"
  printf '%s' "$v"
}
json_string() { printf '%s' "$1" | sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p"; }

# One llama2.c run; prints its tok/s. $1 = binary, $2 = seed (run.c takes seeds > 0).
peer_rate() {
  local rate
  "$1" "$work/model/model.bin" -z "$work/model/tokenizer.bin" -n 136 -t 1.0 -p 1.0 -s "$2" \
    >/dev/null 2>"$work/peer.log" || { cat "$work/peer.log" >&2; die "'$1' failed"; }
  rate="$(sed -n 's/^achieved tok\/s: \([0-9.]*\).*/\1/p' "$work/peer.log")"
  [ -n "$rate" ] || { cat "$work/peer.log" >&2; die "no 'achieved tok/s' line from $1"; }
  printf '%s' "$rate"
}

# median / min / max of whitespace-separated numbers.
stats() { printf '%s' "$1" | tr -s ' ' '\n' | sed '/^$/d' | sort -g | awk '{v[NR]=$1} END {m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2; printf "%.1f %.1f %.1f", m, v[1], v[NR]}'; }
median() { stats "$1" | cut -d' ' -f1; }

coretype="${OPENBLAS_CORETYPE-}"
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
gemm_json="$(rlhf_json --only gemm)"
gemm="$(awk -v g="$(json_number "$gemm_json" gemm_gflops)" 'BEGIN {printf "%.1f", g}')"
openblas_core="$(json_string "$gemm_json" openblas_core)"

p1="" p2="" b1="" b1_1t="" b32="" rlhf_threads="" decode_threads=""
for ((i = 1; i <= runs; i++)); do
  p1+="$(peer_rate "$work/run" "$i") "
  p2+="$(OMP_NUM_THREADS=2 peer_rate "$work/runomp" "$i") "
  j="$(rlhf_json --only gen_b1_cache --repeat 3)"
  b1+="$(json_number "$j" gen_b1_cache) "
  rlhf_threads="$(awk -v t="$(json_number "$j" threads)" 'BEGIN {printf "%d", t}')"
  decode_threads="$(awk -v t="$(json_number "$j" decode_threads)" 'BEGIN {printf "%d", t}')"
  j="$(RLHF_DECODE_THREADS=1 rlhf_json --only gen_b1_cache --repeat 3)"
  b1_1t+="$(json_number "$j" gen_b1_cache) "
  j="$(rlhf_json --only gen_b32_cache --repeat 3)"
  b32+="$(json_number "$j" gen_b32_cache) "
  last() { printf '%s' "$1" | awk '{printf "%.0f", $NF}'; }
  echo "compare_llama2c: round $i/$runs: llama2.c 1t $(last "$p1"), 2t $(last "$p2");" \
    "rlhf b1 $(last "$b1") (1 decode thread: $(last "$b1_1t")), b32 $(last "$b32") tok/s" >&2
done
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

m_p1="$(median "$p1")" m_p2="$(median "$p2")" m_b1="$(median "$b1")" m_b32="$(median "$b32")"
m_b1_1t="$(median "$b1_1t")"
ratio_b1="$(awk -v a="$m_b1" -v b="$m_p1" 'BEGIN {printf "%.2f", a / b}')"
ratio_b1_1t="$(awk -v a="$m_b1_1t" -v b="$m_p1" 'BEGIN {printf "%.2f", a / b}')"
ratio_b32="$(awk -v a="$m_b32" -v b="$m_p2" 'BEGIN {printf "%.2f", a / b}')"
run_c_sha="$(sha256sum "$run_c" | cut -c1-16)"

echo "llama2.c peer comparison, $started ($(nproc) CPUs: $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1))"
echo "run.c sha256 $run_c_sha... | OPENBLAS_CORETYPE=${coretype:-unset} | openblas_core $openblas_core | gemm_gflops $gemm | rlhf threads $rlhf_threads, decode threads $decode_threads"
echo "load average (1/5/15 min): start $load_start, end $load_end | $runs rounds, rlhf figures are medians of --repeat 3"
row() {
  local m lo hi
  read -r m lo hi <<<"$(stats "$2")"
  printf '%-30s %10s %10s %10s\n' "$1" "$m" "$lo" "$hi"
}
if awk -v l="${load_start%% *}" -v n="$(nproc)" 'BEGIN {exit !(l > n)}'; then
  echo "warning: 1-minute load average ${load_start%% *} > $(nproc) CPUs: other work competed; the" \
    "OpenMP build suffers most (its threads wait on each other); compare figures within this run only"
fi
printf '%-30s %10s %10s %10s\n' "tok/s" median min max
row "llama2.c 1 thread" "$p1"
row "llama2.c 2 threads (OpenMP)" "$p2"
row "rlhf gen_b1_cache" "$b1"
row "rlhf gen_b1_cache, 1 thread" "$b1_1t"
row "rlhf gen_b32_cache" "$b32"
echo "rlhf b1 / llama2.c 1 thread:   ${ratio_b1}x (issue #15: >= 1x); with 1 decode thread: ${ratio_b1_1t}x"
echo "rlhf b32 / llama2.c 2 threads: ${ratio_b32}x (issue #15: 8x)"

if [ "$json" = 1 ]; then
  list() { printf '%s' "$1" | sed 's/ *$//; s/ /,/g'; }
  printf '{"started":"%s","runs":%d,"openblas_coretype":"%s","openblas_core":"%s","gemm_gflops":%s,' \
    "$started" "$runs" "${coretype:-unset}" "$openblas_core" "$gemm"
  printf '"rlhf_threads":%s,"decode_threads":%s,"load_start":"%s","load_end":"%s",' \
    "$rlhf_threads" "$decode_threads" "$load_start" "$load_end"
  printf '"run_c_sha256_16":"%s","rlhf_gen_b1_cache_1t":[%s],"median_rlhf_b1_1t":%s,' \
    "$run_c_sha" "$(list "$b1_1t")" "$m_b1_1t"
  printf '"llama2c_1t":[%s],"llama2c_2t":[%s],"rlhf_gen_b1_cache":[%s],"rlhf_gen_b32_cache":[%s],' \
    "$(list "$p1")" "$(list "$p2")" "$(list "$b1")" "$(list "$b32")"
  printf '"median_llama2c_1t":%s,"median_llama2c_2t":%s,"median_rlhf_b1":%s,"median_rlhf_b32":%s,' \
    "$m_p1" "$m_p2" "$m_b1" "$m_b32"
  printf '"ratio_b1_vs_llama2c_1t":%s,"ratio_b1_1t_vs_llama2c_1t":%s,"ratio_b32_vs_llama2c_2t":%s}\n' \
    "$ratio_b1" "$ratio_b1_1t" "$ratio_b32"
fi

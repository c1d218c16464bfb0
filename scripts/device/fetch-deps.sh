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
if awk -v m="$mib" -v l="$LIMIT_MIB" 'BEGIN { exit !(m > l) }'; then
  echo "fetch-deps: over the $LIMIT_MIB MiB budget" >&2
  exit 1
fi

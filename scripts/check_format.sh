#!/usr/bin/env bash
# Checks that every tracked C++ file (*.h, *.cpp) is formatted as .clang-format says.
# Prints the files that differ and exits 1 if there are any; changes nothing.
# Fix one file with: clang-format -i FILE
# Usage: scripts/check_format.sh   (CLANG_FORMAT=clang-format-14 to pick a binary)
set -euo pipefail
cd "$(dirname "$0")/.."
CLANG_FORMAT="${CLANG_FORMAT:-clang-format}"
if ! command -v "$CLANG_FORMAT" >/dev/null; then
  echo "check_format: $CLANG_FORMAT not found (scripts/bootstrap.sh installs clang-format)" >&2
  exit 2
fi
if [ ! -f .clang-format ]; then
  echo "check_format: .clang-format is missing at the repository root" >&2
  exit 2
fi

bad=()
checked=0
while IFS= read -r -d '' f; do
  checked=$((checked + 1))
  if ! "$CLANG_FORMAT" --style=file --dry-run --Werror "$f" >/dev/null 2>&1; then
    bad+=("$f")
  fi
done < <(git ls-files -z -- '*.h' '*.cpp')

if [ "${#bad[@]}" -gt 0 ]; then
  echo "check_format: ${#bad[@]} of $checked files differ from .clang-format:"
  printf '  %s\n' "${bad[@]}"
  echo "fix with: $CLANG_FORMAT -i <file>"
  exit 1
fi
echo "check_format: all $checked files match .clang-format"

#!/usr/bin/env bash
# Checks every project #include "..." against the allowed include graph of docs/architecture.md
# (the fenced block that starts with "# include graph"): each line `ROOM: ROOM ROOM ...` names a
# room (a folder, or a file stem such as reward/comparisons) and the rooms its files may include.
# A file belongs to the longest room that prefixes its path; a file may always include its own
# room. Files under tests/ and build folders are not checked. Also fails on an x86 intrinsic
# (<immintrin.h> and the like, _mm*_ calls) outside policy/kernels/, tests included. Prints each
# include the graph does not allow and exits 1 if there are any; changes nothing.
# Usage: scripts/check_includes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DOC=docs/architecture.md
if [ ! -f "$DOC" ]; then
  echo "check_includes: $DOC is missing" >&2
  exit 2
fi

# The graph: "room allowed..." per line, from the block after the "# include graph" marker.
graph=$(awk '/^# include graph/{on=1; next} on && /^```/{exit} on && NF && $1 !~ /^#/' "$DOC")
if [ -z "$graph" ]; then
  echo "check_includes: no '# include graph' block in $DOC" >&2
  exit 2
fi

declare -A allowed=()
rooms=()
while IFS= read -r line; do
  room=${line%%:*}
  room=${room// /}
  deps=${line#*:}
  allowed[$room]=" $room $deps "
  rooms+=("$room")
done <<<"$graph"

# The room of a path: the longest room that is the path itself without extension, or a folder
# prefix of it.
room_of() {
  local path=$1 best="" r
  for r in "${rooms[@]}"; do
    if [[ "$path" == "$r/"* || "${path%.*}" == "$r" ]]; then
      if [ ${#r} -gt ${#best} ]; then best=$r; fi
    fi
  done
  printf '%s' "$best"
}

bad=0
checked=0
declare -A room_cache=()
while IFS= read -r -d '' file; do
  case "$file" in tests/*) continue ;; esac
  from=$(room_of "$file")
  if [ -z "$from" ]; then
    echo "check_includes: $file is in no room of $DOC (add its folder to the graph)"
    bad=$((bad + 1))
    continue
  fi
  while IFS= read -r inc; do
    [ -n "$inc" ] || continue
    # Only project headers: the first path component must be a top-level folder of ours.
    top=${inc%%/*}
    [ "$top" != "$inc" ] && [ -d "$top" ] || continue
    if [ -z "${room_cache[$inc]+x}" ]; then room_cache[$inc]=$(room_of "$inc"); fi
    to=${room_cache[$inc]}
    checked=$((checked + 1))
    if [ -z "$to" ]; then
      echo "check_includes: $file includes \"$inc\", which is in no room of $DOC"
      bad=$((bad + 1))
    elif [[ "${allowed[$from]}" != *" $to "* ]]; then
      echo "check_includes: $file ($from) includes \"$inc\" ($to): $DOC does not allow $from -> $to"
      bad=$((bad + 1))
    fi
  done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$file")
done < <(git ls-files -z -- '*.h' '*.cpp' '*.cc')

# Every x86 intrinsic lives in policy/kernels/, behind its one instruction-set dispatch (isa.h).
while IFS= read -r hit; do
  echo "check_includes: $hit: x86 intrinsics belong in policy/kernels/ (see policy/kernels/isa.h)"
  bad=$((bad + 1))
done < <(git grep -nE '[<"][a-z0-9]*intrin\.h[>"]|\b_mm(256|512)?_[a-z0-9_]+ *\(' \
           -- '*.h' '*.cpp' '*.cc' ':!policy/kernels/' || true)

if [ "$bad" -gt 0 ]; then
  echo "check_includes: $bad finding(s): the include graph of $DOC, or intrinsics outside policy/kernels/"
  exit 1
fi
echo "check_includes: all $checked project includes follow $DOC"

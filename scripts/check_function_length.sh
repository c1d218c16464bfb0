#!/usr/bin/env bash
# Lists every function in product code longer than the limit (80 lines by default), counted from
# the first line of its signature (a `template <...>` line included) to its closing brace, and
# exits 1 if there are any; changes nothing.
# Product code: every tracked *.h / *.cpp except tests/ and the bench programs (bench/harness/ is
# product code). Functions at namespace scope and member functions defined inside class bodies
# are both counted; lambdas and local classes count towards the function that holds them.
# The scan strips comments, string, character and raw-string literals and follows braces; it
# relies on the code being clang-formatted (no braces hidden in macros at namespace scope).
# Usage: scripts/check_function_length.sh [MAX_LINES] [FILE...]
#   With FILEs, scans only those (any path); MAX_LINES defaults to 80.
set -euo pipefail
cd "$(dirname "$0")/.."
max=${1:-80}
shift || true

files=()
if [ "$#" -gt 0 ]; then
  files=("$@")
else
  while IFS= read -r -d '' f; do
    case "$f" in
      tests/*) continue ;;
      bench/harness/*) ;;
      bench/*) continue ;;
    esac
    files+=("$f")
  done < <(git ls-files -z -- '*.h' '*.cpp')
fi

# Output lines: "LENGTH<TAB>FILE:LINE: NAME"; sorted longest first below.
report=$(awk -v max="$max" '
function reset_header() { header = ""; hline = 0; hparen = 0 }
function declarative() { return sp == 0 || kind[sp] == "N" || kind[sp] == "C" || kind[sp] == "E" }
function add(c) {
  # tail: the last ~300 characters at any depth (to recognise the opening brace of a lambda)
  if (c != " " || substr(tail, length(tail), 1) != " ") tail = substr(tail c, length(tail) > 300 ? 2 : 1)
  if (!declarative()) return
  if (c == " " && (header == "" || substr(header, length(header), 1) == " ")) return
  if (header == "" && c != " ") hline = FNR
  header = header c
  if (c == "(") hparen++
  else if (c == ")") hparen--
  else if (c == ":" && sp > 0 && kind[sp] == "C" && header ~ /^(public|private|protected) *:$/) reset_header()
}
# Removes a leading "template <...>" (nested angle brackets included).
function strip_template(h,    i, d, c) {
  if (h !~ /^template *</) return h
  d = 0
  for (i = index(h, "<"); i <= length(h); i++) {
    c = substr(h, i, 1)
    if (c == "<") d++
    else if (c == ">" && --d == 0) break
  }
  h = substr(h, i + 1)
  sub(/^ +/, "", h)
  return strip_template(h)
}
# The header with everything inside parentheses removed.
function outside_parens(h,    out, i, d, c) {
  out = ""; d = 0
  for (i = 1; i <= length(h); i++) {
    c = substr(h, i, 1)
    if (c == "(") { if (d++ == 0) out = out "(" }
    else if (c == ")") { if (--d == 0) out = out ")" }
    else if (d == 0) out = out c
  }
  return out
}
function classify(h,    o) {
  h = strip_template(h)
  if (h ~ /^(inline )?namespace( |$)/) return "N"
  if (h ~ /^extern( |$)/ && h !~ /\(/) return "E"
  if (h ~ /^(typedef )?(class|struct|union)( |$)/ && h !~ /\)[ A-Za-z&]*(->.*)?$/) return "C"
  if (h ~ /^(typedef )?enum( |$)/) return "O"
  if (h !~ /\(/) return "O"
  o = outside_parens(h)
  gsub(/operator *[-+*\/%^&|!<>=]*=* *\(/, "operator(", o)
  if (o ~ /=/) return "O"
  return "F"
}
function func_name(h,    o, p, n) {
  o = outside_parens(strip_template(h))
  if (match(o, /[A-Za-z0-9_:~]*operator *[^ (]*\(/)) return substr(o, RSTART, RLENGTH - 1)
  if (match(o, /[A-Za-z0-9_]+ *= *[^=]*$/)) { n = substr(o, RSTART); sub(/ *=.*/, "", n); return n }
  p = index(o, "(")
  n = substr(o, 1, p - 1)
  sub(/ +$/, "", n)
  if (match(n, /[A-Za-z0-9_:~<>,]+$/)) n = substr(n, RSTART)
  return n
}
FNR == 1 {
  sp = 0; reset_header(); tail = ""; in_comment = 0; in_raw = 0; raw_end = ""; pp_cont = 0; prev = ""
}
{
  line = $0
  if (pp_cont) { pp_cont = (line ~ /\\$/); next }
  if (!in_comment && !in_raw && line ~ /^[ \t]*#/) { pp_cont = (line ~ /\\$/); next }
  n = length(line)
  i = 1
  while (i <= n) {
    c = substr(line, i, 1)
    if (in_comment) {
      if (c == "*" && substr(line, i + 1, 1) == "/") { in_comment = 0; i += 2 } else i++
      continue
    }
    if (in_raw) {
      if (substr(line, i, length(raw_end)) == raw_end) { in_raw = 0; i += length(raw_end) } else i++
      continue
    }
    if (c == "/" && substr(line, i + 1, 1) == "/") break
    if (c == "/" && substr(line, i + 1, 1) == "*") { in_comment = 1; i += 2; continue }
    if (c == "R" && substr(line, i + 1, 1) == "\"" && (i == 1 || substr(line, i - 1, 1) !~ /[A-Za-z0-9_]/ || substr(line, i - 2, 2) ~ /^(u8|[uUL])$/)) {
      p = index(substr(line, i + 2), "(")
      raw_end = ")" substr(line, i + 2, p - 1) "\""
      in_raw = 1; i += 2 + p; add("\""); add("\""); prev = "\""
      continue
    }
    if (c == "\"" || c == "\047") {
      j = i + 1
      while (j <= n) {
        d = substr(line, j, 1)
        if (d == "\\") { j += 2; continue }
        if (d == c) break
        j++
      }
      add(c); add(c); prev = c; i = j + 1
      continue
    }
    if (c == "{") {
      tail_was = tail; tail = tail "{"
      if (sp > 0 && (kind[sp] == "F" || kind[sp] == "L" || kind[sp] == "O")) kind[++sp] = "O"
      else if (tail_was !~ /operator *\[\] *\([^{}]*\)[^{}]*$/ && tail_was ~ /\[[^\]]*\] *(\([^{}]*\))? *(mutable *)?(noexcept *)?(-> *[^ ][^{}]*)? *$/) {
        kind[++sp] = "L"  # a lambda in a declaration (a command table, an initializer)
        start[sp] = FNR; name[sp] = "lambda in " func_name(header)
      } else if (sp > 0 && kind[sp] == "I") kind[++sp] = "I"
      else if (hparen > 0 || (header ~ /\) *(noexcept *)?:[^:]/ && prev ~ /[A-Za-z0-9_>]/)) {
        kind[++sp] = "I"  # a braced initializer inside a declaration or a constructor init list
      } else {
        k = classify(header)
        kind[++sp] = k
        if (k == "F") { start[sp] = hline; name[sp] = func_name(header) }
        reset_header()
      }
      prev = c; i++
      continue
    }
    if (c == "}") {
      tail = tail "}"
      if (sp > 0) {
        k = kind[sp]
        if ((k == "F" || k == "L") && FNR - start[sp] + 1 > max)
          printf "%d\t%s:%d: %s\n", FNR - start[sp] + 1, FILENAME, start[sp], name[sp]
        sp--
        if (k != "I" && k != "L") reset_header()
      }
      prev = c; i++
      continue
    }
    if (c == ";" && declarative()) { reset_header(); prev = c; i++; continue }
    if (c == "\t") c = " "
    add(c)
    prev = c
    i++
  }
  add(" ")
  prev = " "
}
' "${files[@]}" | sort -t$'\t' -k1,1nr -k2,2)

if [ -n "$report" ]; then
  count=$(printf '%s\n' "$report" | wc -l)
  echo "check_function_length: $count function(s) over $max lines (signature to closing brace):"
  printf '%s\n' "$report" | awk -F'\t' '{ printf "  %4d  %s\n", $1, $2 }'
  exit 1
fi
echo "check_function_length: no function over $max lines in ${#files[@]} files"

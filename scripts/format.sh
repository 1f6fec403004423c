#!/usr/bin/env bash
# Format rlpo's C++ sources with the repo's .clang-format (clang-format 14).
#   scripts/format.sh           rewrite the files in place
#   scripts/format.sh --check   change nothing; fail and list the files that differ
set -euo pipefail
cd "$(dirname "$0")/.."
fmt=${CLANG_FORMAT:-clang-format-14}
if ! command -v "$fmt" >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang-format-14 >/dev/null
fi
mapfile -t files < <(git ls-files 'include/*.hpp' 'tests/*.hpp' 'tests/*.cpp' 'examples/*.hpp' \
  'examples/*.cpp' 'benchmarks/*.hpp' 'benchmarks/*.cpp' 'python/*.hpp' 'python/*.cpp')
if [ "${1:-}" = "--check" ]; then
  bad=()
  for f in "${files[@]}"; do
    "$fmt" --style=file "$f" | cmp -s - "$f" || bad+=("$f")
  done
  if [ ${#bad[@]} -gt 0 ]; then
    echo "clang-format: ${#bad[@]} file(s) differ from .clang-format (run scripts/format.sh):"
    printf '  %s\n' "${bad[@]}"
    exit 1
  fi
  echo "clang-format: ${#files[@]} files clean"
else
  "$fmt" --style=file -i "${files[@]}"
fi

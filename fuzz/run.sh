#!/usr/bin/env bash
# Builds a fuzz target with clang-14's libFuzzer (+ASan, UBSan) and runs it for a bounded time.
# Usage: fuzz/run.sh [header|daemon] [SECONDS=600] [extra libFuzzer flags...]
#   header: safetensors header, DCP sharding info, index json, completion manifest
#   daemon: safeshardd's config, the API's remap request body, the consolidation spec
# New inputs go to fuzz/corpus-work[-daemon]/ (git-ignored); crashes to fuzz/crash-*; the seed
# corpora fuzz/corpus/ and fuzz/corpus-daemon/ are never modified (copy finds there by hand).
# (A bare number as the first argument means `header SECONDS`.)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-header}"
if [[ "$target" =~ ^[0-9]+$ ]]; then target=header; else shift || true; fi
secs="${1:-600}"
shift || true
out=out/fuzz
mkdir -p "$out"
CXX="${CXX:-clang++-14}"
command -v "$CXX" >/dev/null || { echo "fuzz/run.sh: $CXX not found; run tools/setup" >&2; exit 2; }
absl_libs=$(sed -n '/^ABSL_LIBS = \[/,/^\]/p' third_party/BUILD | grep -o '"[a-z_]*"' | tr -d '"' | sed 's/^/-labsl_/' | tr '\n' ' ')
srcs_of() { for d in "$@"; do ls "$d"/*.cc | grep -v '_test.cc$'; done; }
case "$target" in
  header)
    srcs="fuzz/header_fuzzer.cc $(srcs_of core/format)"
    corpus=fuzz/corpus; work=fuzz/corpus-work; libs="" ;;
  daemon)
    srcs="fuzz/daemon_fuzzer.cc daemon/config.cc daemon/requests.cc core/remap/keymap.cc
          $(srcs_of core/format core/consolidate core/layout)
          core/io/filesystem.cc core/io/local_filesystem.cc core/io/mem_filesystem.cc
          core/io/atomic_file.cc core/io/sigbus_guard.cc"
    corpus=fuzz/corpus-daemon; work=fuzz/corpus-work-daemon; libs="-lre2" ;;
  *) echo "fuzz/run.sh: unknown target $target (header or daemon)" >&2; exit 2 ;;
esac
mkdir -p "$work"
# shellcheck disable=SC2086
"$CXX" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I. $srcs -o "$out/${target}_fuzzer" \
  -Wl,--start-group $absl_libs -Wl,--end-group -lxxhash $libs -lpthread
echo "fuzz/run.sh: running $target for ${secs}s"
"$out/${target}_fuzzer" -max_total_time="$secs" -max_len=65536 -timeout=10 \
  -artifact_prefix=fuzz/ "$@" "$work" "$corpus"

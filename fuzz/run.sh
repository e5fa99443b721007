#!/usr/bin/env bash
# Builds the header/index/manifest parser fuzzer with clang-14's libFuzzer (+ASan, UBSan) and runs it for a
# bounded time. Usage: fuzz/run.sh [SECONDS=600] [extra libFuzzer flags...]
# New inputs go to fuzz/corpus-work/ (git-ignored); crashes to fuzz/crash-*; the seed corpus in
# fuzz/corpus/ is never modified (copy interesting finds there by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
shift || true
out=out/fuzz
mkdir -p "$out" fuzz/corpus-work
CXX="${CXX:-clang++-14}"
command -v "$CXX" >/dev/null || { echo "fuzz/run.sh: $CXX not found; run tools/setup" >&2; exit 2; }
absl_libs=$(sed -n '/^ABSL_LIBS = \[/,/^\]/p' third_party/BUILD | grep -o '"[a-z_]*"' | tr -d '"' | sed 's/^/-labsl_/' | tr '\n' ' ')
"$CXX" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I. fuzz/header_fuzzer.cc $(ls core/format/*.cc | grep -v _test.cc) -o "$out/header_fuzzer" \
  -Wl,--start-group $absl_libs -Wl,--end-group -lxxhash -lpthread
echo "fuzz/run.sh: running for ${secs}s"
"$out/header_fuzzer" -max_total_time="$secs" -max_len=65536 -timeout=10 \
  -artifact_prefix=fuzz/ "$@" fuzz/corpus-work fuzz/corpus

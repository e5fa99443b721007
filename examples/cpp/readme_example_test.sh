#!/usr/bin/env bash
# The README shows examples/cpp/consolidate_and_read.cc verbatim, and the program works.
set -euo pipefail
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
cli/safeshard make-example "$tmp/ck" --ranks 2 --layers 1 --hidden 16 --vocab 32 --manifest >/dev/null
out=$(examples/cpp/consolidate_and_read "$tmp/ck" "$tmp/hf")
echo "$out"
grep -q "complete: proven" <<<"$out"
grep -q "consolidated .* into" <<<"$out"
grep -q "^read [0-9]* bytes of " <<<"$out"
test -f "$tmp/hf/model.safetensors.index.json"
/usr/bin/python3 - <<'PY'
code = open("examples/cpp/consolidate_and_read.cc").read()
readme = open("README.md").read()
assert code in readme, "README.md must show examples/cpp/consolidate_and_read.cc verbatim"
PY
echo "readme_example_test: ok"

#!/usr/bin/env bash
# Runs the real `safeshard` binary as a user would and checks exit codes and output.
set -euo pipefail
bin="$(dirname "$0")/safeshard"
[[ -x "$bin" ]] || bin="cli/safeshard"
tmp="${TEST_TMPDIR:-$(mktemp -d)}/clibin"
rm -rf "$tmp"
fail() { echo "FAIL: $*" >&2; exit 1; }

"$bin" make-example "$tmp/ok" --ranks 4 --layers 1 --hidden 32 --vocab 64 >/dev/null
"$bin" verify "$tmp/ok" >/dev/null || fail "verify of a clean example should exit 0"
"$bin" inspect "$tmp/ok" | grep -q "dcp_sharded, 4 ranks" || fail "inspect summary line"

"$bin" make-example "$tmp/gap" --ranks 4 --layers 1 --hidden 32 --vocab 64 \
  --gap lm_head.weight:2 >/dev/null
set +e
"$bin" verify "$tmp/gap" >"$tmp/out.txt" 2>/dev/null; rc=$?
set -e
[[ $rc -eq 1 ]] || fail "verify with a gap should exit 1, got $rc"
grep -q '^gap: tensor "lm_head.weight"' "$tmp/out.txt" || fail "gap line missing"

set +e
"$bin" verify >/dev/null 2>&1; rc=$?
set -e
[[ $rc -eq 2 ]] || fail "missing argument should exit 2, got $rc"
"$bin" --help | grep -q "make-example" || fail "--help lists commands"
# More rank files than the soft open-file limit: the binary raises it to the hard limit.
if [[ "$(ulimit -Hn)" == unlimited || "$(ulimit -Hn)" -ge 1024 ]]; then
  "$bin" make-example "$tmp/many" --ranks 300 --many 600 >/dev/null
  (ulimit -Sn 128; "$bin" consolidate "$tmp/many" "$tmp/many-hf" >/dev/null) ||
    fail "consolidating 300 rank files under a soft limit of 128 descriptors"
  "$bin" verify "$tmp/many-hf" >/dev/null || fail "the consolidation of 300 ranks verifies"
fi
# Option files may be pipes (process substitution).
"$bin" remap "$tmp/ok" "$tmp/ok-renamed" --rules <(printf '[["^lm_head\\\\.", "output."]]') >/dev/null ||
  fail "remap --rules <(...) from a pipe"
"$bin" inspect "$tmp/ok-renamed" | grep -q "output.weight" || fail "the rule read from a pipe was applied"
echo "cli_binary_test: 1 passed, 0 failed"

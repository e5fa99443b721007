#!/usr/bin/env bash
# Builds optimised binaries and runs every benchmark. Results are ratios against baselines
# (cat, cp, dd) measured in the same run, never absolute thresholds.
# Usage: bench/run.sh [scan|consolidate|dequantize|python|daemon-idle|dcp|inspector|remote|diff]
set -euo pipefail
cd "$(dirname "$0")/.."
bazel build --config=opt //cli:safeshard //bench:scan_bench //bench:consolidate_bench //bench:dequantize_bench //bench:daemon_idle_bench //daemon:safeshardd //bench:dcp_bench //core/dcp:safeshard-torch //bench:inspector_open_bench //bench:remote_bench //bench:diff_bench //python:package
which="${1:-all}"
wanted() { [[ "$which" == all || "$which" == "$1" ]]; }
if wanted scan; then
  echo "== header scan: 100,000 tensors, 64 files =="
  bazel-bin/bench/scan_bench "$PWD/bazel-bin/cli/safeshard"
fi
if wanted consolidate; then
  echo "== consolidation: >= 2 GB, 8 ranks =="
  bazel-bin/bench/consolidate_bench "$PWD/bazel-bin/cli/safeshard"
fi
if wanted dequantize; then
  echo "== dequantization: >= 1 GB FP8 block-quantized model to BF16 =="
  bazel-bin/bench/dequantize_bench "$PWD/bazel-bin/cli/safeshard"
fi
if wanted python; then
  echo "== Python module: consolidate_safetensors_files vs the CLI; read_slice vs cat =="
  /usr/bin/python3 bench/python_bench.py "$PWD/bazel-bin/cli/safeshard" "$PWD/bazel-bin/python/pkg"
fi
if wanted daemon-idle; then
  echo "== safeshardd idle cost: 1,000 finished runs =="
  bazel-bin/bench/daemon_idle_bench "$PWD/bazel-bin/daemon/safeshardd" --rescan 20 --window 45
fi
if wanted dcp; then
  echo "== 4-rank save (>= 2 GB) and resharding load =="
  bazel-bin/bench/dcp_bench "$PWD/bazel-bin/core/dcp/safeshard-torch"
fi
if wanted inspector; then
  echo "== safeshard-inspector: open 100,000 tensors / 64 files until the tree is shown =="
  bazel-bin/bench/inspector_open_bench "$PWD/bazel-bin/cli/safeshard"
fi
if wanted diff; then
  echo "== safeshard diff: 8-rank shards vs their consolidation, against cmp of the same bytes =="
  bazel-bin/bench/diff_bench "$PWD/bazel-bin/cli/safeshard"
fi
if wanted remote; then
  echo "== remote storage over loopback nginx: header scan and 1 GiB load vs curl =="
  bazel-bin/bench/remote_bench
fi

#!/usr/bin/env python3
"""Benchmark: the Python binding against the CLI, and read_slice against cat, in the same run.

1. consolidate_safetensors_files (Python) vs `safeshard consolidate` (CLI) of the same generated
   8-rank checkpoint (>= 1 GB), best of 3 each: the binding should add < 5%.
2. read_slice of column slices (4 per 2-D tensor, every tensor wholly read, from the row- and
   mesh-sharded per-rank files) vs `cat` of the files to /dev/null (warm page cache).

Usage: bench/python_bench.py SAFESHARD_CLI PYTHONPATH_DIR [--hidden H] [--layers L] [--dir D]
"""
import argparse
import os
import shutil
import subprocess
import sys
import time


def best(f, n=3):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cli")
    ap.add_argument("pythonpath")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--dir", default=f"/var/tmp/safeshard-python-bench-{os.getpid()}")
    a = ap.parse_args()
    sys.path.insert(0, a.pythonpath)
    import numpy as np
    import safeshard

    root = a.dir
    shutil.rmtree(root, ignore_errors=True)
    ck = os.path.join(root, "ck")
    subprocess.run([a.cli, "make-example", ck, "--ranks", "8", "--layers", str(a.layers),
                    "--hidden", str(a.hidden), "--vocab", "32000"], check=True,
                   stdout=subprocess.DEVNULL)
    files = [os.path.join(ck, f) for f in sorted(os.listdir(ck)) if f.endswith(".safetensors")]
    total = sum(os.path.getsize(f) for f in files)
    print(f"generated {total / 1e9:.2f} GB as 8 per-rank files in {ck}")

    def cli():
        out = os.path.join(root, "cli")
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([a.cli, "consolidate", ck, out, "--threads", "2"], check=True,
                       stdout=subprocess.DEVNULL)

    def py():
        out = os.path.join(root, "py")
        shutil.rmtree(out, ignore_errors=True)
        safeshard.consolidate_safetensors_files(ck, out, num_threads=2)

    cli()
    py()  # warm
    t_cli, t_py = best(cli), best(py)
    print(f"safeshard consolidate (CLI)            {t_cli:7.3f} s  {total / t_cli / 1e9:6.2f} GB/s")
    print(f"consolidate_safetensors_files (Python) {t_py:7.3f} s  {total / t_py / 1e9:6.2f} GB/s"
          f"  binding overhead {100 * (t_py / t_cli - 1):+.1f}%")
    print(f"RESULT|Python consolidate_safetensors_files, {total / 1e9:.2f} GB 8 ranks|"
          f"{t_py:.3f} s|CLI {t_cli:.3f} s|{100 * (t_py / t_cli - 1):+.1f}% vs the CLI", flush=True)

    reader = safeshard.Reader(ck)
    plan = []
    for name in reader.names():
        dtype, shape = reader.info(name)
        if len(shape) != 2 or shape[1] < 4 or dtype not in ("F32", "BF16", "F16"):
            continue
        step = shape[1] // 4
        for c in range(4):
            width = step if c < 3 else shape[1] - 3 * step
            out = np.empty((shape[0], width), dtype="float32" if dtype == "F32" else "uint16")
            plan.append((name, (0, c * step), (shape[0], width), out))
    sliced = sum(p[3].nbytes for p in plan)

    def slices():
        for name, off, size, out in plan:
            reader.read(name, off, size, out)

    def cat():
        subprocess.run(["cat"] + files, check=True, stdout=subprocess.DEVNULL)

    cat()
    slices()  # warm
    t_cat, t_sl = best(cat), best(slices)
    print(f"cat of the 8 files (baseline)          {t_cat:7.3f} s  {total / t_cat / 1e9:6.2f} GB/s")
    print(f"read_slice, {len(plan)} column slices       {t_sl:7.3f} s  {sliced / t_sl / 1e9:6.2f} GB/s"
          f"  ratio {t_cat / t_sl * sliced / total:.2f}x cat's throughput")
    print(f"RESULT|Python read_slice, {len(plan)} column slices of 8 rank files|{t_sl:.3f} s "
          f"({sliced / t_sl / 1e9:.2f} GB/s)|cat {t_cat:.3f} s ({total / t_cat / 1e9:.2f} GB/s)|"
          f"{t_cat / t_sl * sliced / total:.2f}x cat throughput", flush=True)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The Python module against the C++ core and the CLI (run by `bazel test //python:python_test`)."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import safeshard

CLI = os.environ.get("SAFESHARD_CLI", "safeshard")


def run_python(code, env=None):
    """Runs `code` in a fresh python3 (the way a training rank would) and returns it."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def write_ranks(path, world=2):
    """Two processes write a row-, column- and rank-0-only sharded state dict with ShardWriter."""
    procs = []
    for rank in range(world):
        procs.append(run_python(f"""
            import numpy as np, torch, safeshard
            rank, world = {rank}, {world}
            w = safeshard.ShardWriter({str(path)!r}, rank, world)
            emb = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
            rows = 8 // world
            w.add("model.embed.weight", emb[rank * rows:(rank + 1) * rows], offsets=(rank * rows, 0),
                  global_shape=(8, 6))
            proj = torch.arange(4 * 10, dtype=torch.float32).reshape(4, 10).to(torch.bfloat16)
            cols = 10 // world
            w.add("model.proj.weight", proj[:, rank * cols:(rank + 1) * cols].contiguous(),
                  offsets=(0, rank * cols), global_shape=(4, 10))
            if rank == 0:
                w.add("model.norm.weight", np.ones(6, dtype=np.float16))
            print(w.commit())
        """))
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    return path


def test_version_and_errors(tmp_path):
    assert safeshard.__version__.count(".") == 2
    with pytest.raises(FileNotFoundError):
        safeshard.verify(str(tmp_path / "missing"))
    report = safeshard.verify_report(str(tmp_path))
    assert not report["ok"]
    assert report["problems"][0]["kind"] == "no_checkpoint"
    assert safeshard._extract_file_index("model-00002-of-00008.safetensors") == 2
    assert safeshard._extract_file_index("out/shard-00001-model-00003-of-00004.safetensors") == 3
    assert safeshard._extract_file_index("model.safetensors") == 1
    assert safeshard._extract_file_index("weights.safetensors") == 1
    assert safeshard._extract_file_index("model-00009-of-00008.safetensors") == 1


def test_two_writer_processes_then_consolidate_equals_the_cli_and_reads_back(tmp_path):
    ckpt = write_ranks(tmp_path / "ckpt")
    assert (ckpt / "safeshard.complete.json").exists()  # every rank committed
    report = safeshard.verify_report(str(ckpt))
    assert report["ok"] and report["completeness"]["proven"], report
    seen = []
    out = tmp_path / "py"
    r = safeshard.consolidate_safetensors_files(str(ckpt), str(out), num_threads=2,
                                                progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]
    assert "model.safetensors.index.json" in r["files"]
    cli = tmp_path / "cli"
    subprocess.run([CLI, "consolidate", str(ckpt), str(cli)], check=True, capture_output=True)
    for name in ("model-00001-of-00001.safetensors", "model.safetensors.index.json"):
        assert (out / name).read_bytes() == (cli / name).read_bytes(), name
    # Back into another sharding: column slices of the row-saved embedding.
    emb = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
    for path in (ckpt, out):
        reader = safeshard.Reader(str(path))
        assert reader.info("model.embed.weight") == ("F32", [8, 6])
        for c in range(3):
            got = reader.read("model.embed.weight", (0, 2 * c), (8, 2))
            np.testing.assert_array_equal(got, emb[:, 2 * c:2 * c + 2])
        # bfloat16 into a torch tensor (DLPack), zero-copy.
        t = torch.empty((2, 10), dtype=torch.bfloat16)
        reader.read("model.proj.weight", (1, 0), (2, 10), out=t)
        want = torch.arange(4 * 10, dtype=torch.float32).reshape(4, 10).to(torch.bfloat16)[1:3]
        assert torch.equal(t, want)
    assert safeshard.read_slice(str(ckpt), "model.norm.weight", (2,), (3,)).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="outside its shape"):
        safeshard.read_slice(str(ckpt), "model.embed.weight", (7, 0), (2, 6))
    with pytest.raises(FileNotFoundError, match="no tensor"):
        safeshard.read_slice(str(ckpt), "nope", (0,), (1,))


def test_automodel_style_calls_with_a_reference_mapping(tmp_path):
    ckpt = write_ranks(tmp_path / "ckpt")
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "model.safetensors.index.json").write_text(json.dumps({
        "metadata": {"total_size": 0},
        "weight_map": {"model.embed.weight": "model-00001-of-00002.safetensors",
                       "model.proj.weight": "model-00002-of-00002.safetensors",
                       "model.norm.weight": "model-00002-of-00002.safetensors"}}))
    mapping = safeshard.get_fqn_to_file_index_mapping(str(ref))
    assert mapping == {"model.embed.weight": 1, "model.proj.weight": 2, "model.norm.weight": 2}
    renamed = safeshard.get_fqn_to_file_index_mapping(str(ref), key_mapping={r"^model\.": ""})
    assert renamed["embed.weight"] == 1
    out = tmp_path / "hf"
    safeshard.consolidate_safetensors_files(input_dir=str(ckpt), output_dir=str(out),
                                            fqn_to_index_mapping=mapping, num_threads=1)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["model.proj.weight"] == "model-00002-of-00002.safetensors"
    assert index["metadata"]["total_parameters"] == 8 * 6 + 4 * 10 + 6
    # Refused before anything is written: an incomplete input (rank 1's file lost).
    os.remove(ckpt / "shard-00002-model-00001-of-00001.safetensors")
    with pytest.raises(safeshard.CheckpointError, match="nothing was written"):
        safeshard.consolidate_safetensors_files(str(ckpt), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_inspect_diff_remap(tmp_path):
    ckpt = write_ranks(tmp_path / "ckpt")
    info = safeshard.inspect(str(ckpt))
    assert info["schema"] == "safeshard.inspect/1" and info["ranks"] == 2
    names = [t["name"] for t in info["tensors"]]
    assert names == sorted(names) and "model.proj.weight" in names
    out = tmp_path / "hf"
    safeshard.consolidate_safetensors_files(str(ckpt), str(out))
    d = safeshard.diff(str(ckpt), str(out))
    assert d["identical"] and d["in_both"] == 3
    plan = safeshard.remap(str(out), str(tmp_path / "r"), {r"^model\.": ""}, dry_run=True)
    assert plan["renames"]["model.norm.weight"] == "norm.weight"
    done = safeshard.remap(str(out), str(tmp_path / "r"), [(r"^model\.", "")])
    assert done["changed"] == 3
    d2 = safeshard.diff(str(out), str(tmp_path / "r"))
    assert not d2["identical"]
    assert {x["kind"] for x in d2["diffs"]} == {"only in A", "only in B"}  # as the CLI's JSON


def test_consolidation_on_every_rank_over_tcp_and_a_failing_rank(tmp_path):
    ckpt = write_ranks(tmp_path / "ckpt")
    out = tmp_path / "every"
    port = 20000 + os.getpid() % 20000
    code = f"""
        import safeshard
        r = safeshard.consolidate_safetensors_files_on_every_rank({str(ckpt)!r}, {str(out)!r},
                                                                 num_threads=1, timeout=60)
        print("ok", r["bytes"])
    """
    env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "SAFESHARD_PORT": str(port)}
    procs = [run_python(code, dict(env, RANK=str(r))) for r in range(2)]
    for p in procs:
        o, e = p.communicate(timeout=120)
        assert p.returncode == 0, e
    single = tmp_path / "single"
    safeshard.consolidate_safetensors_files(str(ckpt), str(single))
    name = "model-00001-of-00001.safetensors"
    assert (out / name).read_bytes() == (single / name).read_bytes()
    # Rank 1 is given a missing input: both ranks raise, naming rank 1.
    code_bad = """
        import os, safeshard
        src = {ckpt!r} if os.environ["RANK"] == "0" else {missing!r}
        try:
            safeshard.consolidate_safetensors_files_on_every_rank(src, {out!r}, timeout=60)
        except Exception as e:
            print(type(e).__name__, e)
            raise SystemExit(3)
    """.format(ckpt=str(ckpt), missing=str(tmp_path / "missing"), out=str(tmp_path / "bad"))
    env["SAFESHARD_PORT"] = str(port + 1)
    procs = [run_python(code_bad, dict(env, RANK=str(r))) for r in range(2)]
    for p in procs:
        o, e = p.communicate(timeout=120)
        assert p.returncode == 3, (o, e)
        assert "rank 1:" in o, o
    assert not (tmp_path / "bad" / "model.safetensors.index.json").exists()


def test_a_raising_progress_callback_and_ctrl_c_cancel_and_publish_nothing(tmp_path):
    ckpt = tmp_path / "big"
    w = safeshard.ShardWriter(str(ckpt), 0, 1)
    big = np.zeros((4096, 4096), dtype=np.float32)  # 64 MiB: many progress calls
    w.add("w", big)
    w.commit()

    def boom(done, total):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        safeshard.consolidate_safetensors_files(str(ckpt), str(tmp_path / "a"), progress=boom)
    assert not (tmp_path / "a" / "model.safetensors.index.json").exists()
    # Ctrl+C (SIGINT to the process) while consolidating: KeyboardInterrupt, no index.
    p = run_python(f"""
        import os, signal, safeshard
        fired = []
        def progress(done, total):
            if not fired:
                fired.append(1)
                os.kill(os.getpid(), signal.SIGINT)
        try:
            safeshard.consolidate_safetensors_files({str(ckpt)!r}, {str(tmp_path / "b")!r},
                                                    progress=progress)
        except KeyboardInterrupt:
            print("interrupted")
    """)
    o, e = p.communicate(timeout=120)
    assert "interrupted" in o, (o, e)
    assert not (tmp_path / "b" / "model.safetensors.index.json").exists()


def test_shard_writer_validates_and_takes_raw_dtypes(tmp_path):
    w = safeshard.ShardWriter(str(tmp_path / "c"), 0, 1)
    with pytest.raises(ValueError, match="outside the global shape"):
        w.add("a", np.zeros(4, dtype=np.float32), offsets=(2,), global_shape=(4,))
    with pytest.raises(ValueError, match="not C-contiguous"):
        w.add("a", np.zeros((4, 4), dtype=np.float32)[:, ::2])
    # FP8 codes as uint8 with dtype=, bf16 bits as uint16.
    w.add("q.weight", np.full((2, 2), 0x38, dtype=np.uint8), dtype="F8_E4M3")
    w.add("b", np.full(3, 0x3f80, dtype=np.uint16), dtype="bfloat16")
    w.commit()
    info = safeshard.inspect(str(tmp_path / "c"))
    dtypes = {t["name"]: t["dtype"] for t in info["tensors"]}
    assert dtypes == {"q.weight": "F8_E4M3", "b": "BF16"}
    t = torch.empty(3, dtype=torch.bfloat16)
    safeshard.read_slice(str(tmp_path / "c"), "b", (0,), (3,), out=t)
    assert t.tolist() == [1.0, 1.0, 1.0]


def test_arrays_that_cannot_be_taken_as_they_are_are_refused(tmp_path):
    w = safeshard.ShardWriter(str(tmp_path / "c"), 0, 1)
    with pytest.raises(ValueError, match="big-endian"):
        w.add("be", np.arange(4, dtype=">f4"))
    with pytest.raises(ValueError, match="has no safetensors dtype"):
        w.add("c", np.array([1 + 2j, 3 + 4j], dtype=np.complex64))
    with pytest.raises(ValueError, match="resolve_neg"):
        w.add("n", torch.arange(4, dtype=torch.float32)._neg_view())
    t = torch.arange(256, dtype=torch.float32)
    w.add("x", t)
    t.resize_(100000)  # its memory moves: the pointer add() took would dangle
    with pytest.raises(ValueError, match="resized or re-pointed"):
        w.commit()
    with pytest.raises(ValueError, match="not a rank of a group of 2"):
        safeshard.ShardWriter(str(tmp_path / "d"), 3, 2)
    with pytest.raises(ValueError, match="is not in 1..99999"):
        safeshard.ShardWriter(str(tmp_path / "d"), 0, 1, fqn_to_index_mapping={"a": 0})
    w2 = safeshard.ShardWriter(str(tmp_path / "e"), 0, 1)
    w2.add("a", np.zeros((4, 2), dtype=np.float32), offsets=(0, 0), global_shape=(6, 2))
    with pytest.raises(ValueError, match="overlaps one added before"):
        w2.add("a", np.zeros((4, 2), dtype=np.float32), offsets=(2, 0), global_shape=(6, 2))
    w2.add("a", np.ones((2, 2), dtype=np.float32), offsets=(4, 0), global_shape=(6, 2))
    w2.commit()
    with pytest.raises(ValueError, match="out has shape"):
        safeshard.read_slice(str(tmp_path / "e"), "a", (0, 0), (2, 2),
                             out=np.empty(4, dtype=np.float32))
    with pytest.raises(ValueError, match="big-endian"):
        safeshard.read_slice(str(tmp_path / "e"), "a", (0, 0), (2, 2),
                             out=np.empty((2, 2), dtype=">f4"))
    for bad in ({"max_shard_size": True}, {"key_mapping": ["ab"]}):
        with pytest.raises(ValueError):
            safeshard.consolidate_safetensors_files(str(tmp_path / "e"), str(tmp_path / "f"), **bad)
    with pytest.raises(ValueError, match="num_threads"):
        safeshard.consolidate_safetensors_files(str(tmp_path / "e"), str(tmp_path / "f"), None, -5)


def test_an_unfinished_resave_is_never_mistaken_for_a_checkpoint(tmp_path):
    ckpt = write_ranks(tmp_path / "ckpt")
    # A new save into the same directory where only rank 0 gets to commit (rank 1 died).
    w = safeshard.ShardWriter(str(ckpt), 0, 2)
    w.add("model.embed.weight", np.full((4, 6), 7, dtype=np.float32), offsets=(0, 0),
          global_shape=(8, 6))
    w.commit()
    report = safeshard.verify_report(str(ckpt))
    assert not report["ok"]
    assert "unfinished_save" in {p["kind"] for p in report["problems"]}
    with pytest.raises(safeshard.CheckpointError, match="unfinished"):
        safeshard.consolidate_safetensors_files(str(ckpt), str(tmp_path / "out"))


def test_ctrl_c_stops_a_commit_and_a_rendezvous_at_once(tmp_path):
    p = run_python(f"""
        import os, signal, threading, time, numpy as np, safeshard
        w = safeshard.ShardWriter({str(tmp_path / "c")!r}, 0, 1)
        for i in range(24):
            w.add(f"w{{i}}", np.zeros((4096, 4096), dtype=np.float32))  # 1.6 GB
        threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        t0 = time.time()
        try:
            w.commit()
        except KeyboardInterrupt:
            print("interrupted", round(time.time() - t0, 1))
    """)
    o, e = p.communicate(timeout=120)
    assert "interrupted" in o, (o, e)
    assert not (tmp_path / "c" / "safeshard.complete.json").exists()
    assert not [f for f in os.listdir(tmp_path / "c") if f.endswith(".safetensors")]
    p = run_python(f"""
        import os, signal, threading, time, safeshard
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        t0 = time.time()
        try:
            safeshard.consolidate_safetensors_files_on_every_rank(
                {str(tmp_path)!r}, {str(tmp_path / "o")!r}, rank=0, world_size=2,
                port={20000 + (os.getpid() + 7) % 20000}, timeout=60)
        except KeyboardInterrupt:
            print("interrupted", round(time.time() - t0, 1))
    """)
    o, e = p.communicate(timeout=120)
    assert "interrupted" in o, (o, e)
    assert float(o.split()[1]) < 10, o

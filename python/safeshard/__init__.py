"""safeshard: HuggingFace-format distributed checkpoints, from Python, on a C++ core.

Drop-in for PyTorch's and NeMo Automodel's consolidation (one import changes)::

    # from torch.distributed.checkpoint._consolidate_hf_safetensors import (
    #     consolidate_safetensors_files)
    from safeshard import consolidate_safetensors_files
    consolidate_safetensors_files("/ckpt/step-100/sharded", "/ckpt/step-100/hf",
                                  fqn_to_index_mapping=mapping, num_threads=8)

A shard writer and a slice reader for any training loop, whatever its torch version (numpy
arrays and CPU torch tensors alike, zero-copy, bf16 included)::

    w = safeshard.ShardWriter("/ckpt/step-100", rank, world_size)
    w.add("model.embed.weight", local_rows, offsets=(rank * rows, 0), global_shape=(vocab, dim))
    w.commit()   # the completion manifest appears once every rank has committed
    safeshard.read_slice("/ckpt/step-100", "model.embed.weight", (0, 512), (vocab, 512), out=t)

Every function releases the GIL while it reads or writes; Ctrl+C cancels cleanly (nothing
half-written is published) and raises KeyboardInterrupt. Errors carry the C++ messages (file,
tensor, offset): ValueError for bad arguments, FileNotFoundError, FileExistsError, TimeoutError,
and CheckpointError (a RuntimeError) for an incomplete, inconsistent or corrupt checkpoint.
"""

import json as _json
import os as _os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import _safeshard as _core

__version__ = _core.__version__
CheckpointError = _core.CheckpointError
ShardWriter = _core.ShardWriter

__all__ = [
    "CheckpointError",
    "Reader",
    "ShardWriter",
    "consolidate_safetensors_files",
    "consolidate_safetensors_files_on_every_rank",
    "diff",
    "get_fqn_to_file_index_mapping",
    "inspect",
    "read_slice",
    "remap",
    "verify",
]

KeyMapping = Union[Dict[str, str], Sequence[Tuple[str, str]], None]


def _rules(key_mapping: KeyMapping) -> List[Tuple[str, str]]:
    """transformers' key_mapping {regex: replacement} (first match wins) or a list of pairs."""
    if key_mapping is None:
        return []
    if isinstance(key_mapping, dict):
        return [(str(k), str(v)) for k, v in key_mapping.items()]
    rules = []
    for rule in key_mapping:
        if isinstance(rule, (str, bytes)) or len(rule) != 2:
            raise ValueError(f"key_mapping: {rule!r} is not a (regex, replacement) pair")
        rules.append((str(rule[0]), str(rule[1])))
    return rules


def _spec(num_threads: int, max_shard_size, reference, cast_dtype, key_mapping, dequantize,
          block_size, verify, overwrite, expect_ranks, strict, checksums, model_files,
          unmapped) -> str:
    if isinstance(max_shard_size, bool) or (
            max_shard_size is not None and not isinstance(max_shard_size, (str, int))):
        raise ValueError(f"max_shard_size={max_shard_size!r}: give bytes (int) or e.g. '5GB'")
    if max_shard_size is not None and not isinstance(max_shard_size, str):
        # An int is bytes, as save_pretrained(max_shard_size=...) takes it.
        max_shard_size = f"{int(max_shard_size)}B"
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or not (
            0 <= num_threads <= 1024):
        raise ValueError(f"num_threads={num_threads!r}: 0 (every core) to 1024")
    spec = {
        "max_shard_size": max_shard_size or "",
        "reference": _os.fspath(reference) if reference else "",
        "cast_dtype": str(cast_dtype) if cast_dtype else "",
        "key_map": [list(r) for r in _rules(key_mapping)],
        "dequantize": str(dequantize) if dequantize else "",
        "block_size": str(block_size) if block_size else "",
        "threads": int(num_threads),
        "verify": bool(verify),
        "overwrite": bool(overwrite),
        "expect_ranks": int(expect_ranks),
        "strict": bool(strict),
        "checksums": bool(checksums),
        "model_files": bool(model_files),
        "unmapped": unmapped,
    }
    return _json.dumps(spec)


def consolidate_safetensors_files(
    input_dir: str,
    output_dir: str,
    fqn_to_index_mapping: Optional[Dict[str, int]] = None,
    num_threads: int = 1,
    *,
    max_shard_size: Union[str, int, None] = None,
    reference: Optional[str] = None,
    cast_dtype: Optional[str] = None,
    key_mapping: KeyMapping = None,
    dequantize: Optional[str] = None,
    block_size: Optional[str] = None,
    verify: bool = False,
    overwrite: bool = False,
    expect_ranks: int = 0,
    strict: bool = False,
    checksums: bool = True,
    model_files: bool = True,
    unmapped: str = "error",
    progress: Optional[Callable[[int, int], None]] = None,
) -> Dict[str, Any]:
    """Consolidates per-rank shards into model-0000i-of-0000N.safetensors + the index json.

    The signature of PyTorch's ``_consolidate_hf_safetensors.consolidate_safetensors_files``
    (and NeMo Automodel's backport); keyword options are those of ``safeshard consolidate``.
    The input is refused before anything is written when it is incomplete or inconsistent; the
    outputs are streamed, fsynced and published atomically, the index last.

    Returns {"output_dir", "files", "bytes", "seconds", "warnings", "dequantized",
    "verified_bytes"}.
    """
    spec = _spec(num_threads, max_shard_size, reference, cast_dtype, key_mapping, dequantize,
                 block_size, verify, overwrite, expect_ranks, strict, checksums, model_files,
                 unmapped)
    mapping = None if fqn_to_index_mapping is None else {
        str(k): int(v) for k, v in fqn_to_index_mapping.items()}
    return _core.consolidate(_os.fspath(input_dir), _os.fspath(output_dir), spec, mapping,
                             progress, 0, 1, "", 0, 0.0, "")


def consolidate_safetensors_files_on_every_rank(
    input_dir: str,
    output_dir: str,
    fqn_to_index_mapping: Optional[Dict[str, int]] = None,
    num_threads: int = 1,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    *,
    master_addr: Optional[str] = None,
    port: Optional[int] = None,
    timeout: float = 600.0,
    **options: Any,
) -> Dict[str, Any]:
    """Every rank calls this with the same arguments; they share the work by bytes.

    Rank and world size default to torchrun's RANK and WORLD_SIZE; the ranks meet over TCP at
    MASTER_ADDR (default 127.0.0.1) on SAFESHARD_PORT, else MASTER_PORT + 1 (torch's own store
    keeps MASTER_PORT). No torch.distributed is needed. Rank 0 publishes once every rank has
    finished its share; a failure on any rank is raised on every rank ("rank R: ...").
    """
    env = _os.environ
    rank = int(env.get("RANK", "0")) if rank is None else int(rank)
    world_size = int(env.get("WORLD_SIZE", "1")) if world_size is None else int(world_size)
    host = master_addr or env.get("MASTER_ADDR", "127.0.0.1")
    if port is None:
        port = int(env["SAFESHARD_PORT"]) if "SAFESHARD_PORT" in env else int(
            env.get("MASTER_PORT", "29500")) + 1
    spec = _spec(num_threads, options.pop("max_shard_size", None), options.pop("reference", None),
                 options.pop("cast_dtype", None), options.pop("key_mapping", None),
                 options.pop("dequantize", None), options.pop("block_size", None),
                 options.pop("verify", False), options.pop("overwrite", False),
                 options.pop("expect_ranks", 0), options.pop("strict", False),
                 options.pop("checksums", True), options.pop("model_files", True),
                 options.pop("unmapped", "error"))
    progress = options.pop("progress", None)
    import math
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout={timeout!r}: a positive number of seconds")
    if options:
        raise TypeError(f"unexpected keyword arguments: {sorted(options)}")
    mapping = None if fqn_to_index_mapping is None else {
        str(k): int(v) for k, v in fqn_to_index_mapping.items()}
    # Two jobs meeting on one port by mistake refuse each other (the output directory's name;
    # ranks may mount the file system at different paths).
    key = _os.path.basename(_os.path.normpath(_os.fspath(output_dir)))
    return _core.consolidate(_os.fspath(input_dir), _os.fspath(output_dir), spec, mapping,
                             progress, rank, world_size, host, int(port), float(timeout), key)


def inspect(path: str) -> Dict[str, Any]:
    """The checkpoint as ``safeshard inspect --json`` prints it (schema safeshard.inspect/1)."""
    return _core.inspect_json(_os.fspath(path))


def verify(path: str, expect_ranks: int = 0, reference: Optional[str] = None,
           strict: bool = False, checksums: bool = False) -> List[Dict[str, Any]]:
    """The problems of a checkpoint (each {"kind", "file", "tensor", "message", "blocking"});
    empty when it is sound. ``verify_report`` gives completeness too."""
    return verify_report(path, expect_ranks, reference, strict, checksums)["problems"]


def verify_report(path: str, expect_ranks: int = 0, reference: Optional[str] = None,
                  strict: bool = False, checksums: bool = False) -> Dict[str, Any]:
    """``safeshard verify --json``: {"ok", "problems", "completeness"[, "checksums"]}."""
    return _core.verify(_os.fspath(path), int(expect_ranks),
                        _os.fspath(reference) if reference else "", bool(strict),
                        bool(checksums))


def diff(a: str, b: str, headers_only: bool = False, atol: Optional[float] = None,
         rtol: Optional[float] = None) -> Dict[str, Any]:
    """Compares two checkpoints of any layouts tensor by tensor: {"identical", "in_both",
    "identical_tensors", "bytes_compared", "diffs": [{"kind", "name", "detail", ...}]}."""
    return _core.diff(_os.fspath(a), _os.fspath(b), bool(headers_only), atol, rtol)


def remap(input_dir: str, output_dir: Optional[str], key_mapping: KeyMapping,
          dry_run: bool = False, in_place: bool = False, overwrite: bool = False
          ) -> Dict[str, Any]:
    """Renames tensors (regex rules, first match wins, ``\\1`` back-references) into
    ``output_dir`` (or in place); collisions are refused before anything is written."""
    return _core.remap(_os.fspath(input_dir), _os.fspath(output_dir or input_dir),
                       _rules(key_mapping), bool(dry_run), bool(in_place), bool(overwrite))


def get_fqn_to_file_index_mapping(reference_model_path: str,
                                  key_mapping: KeyMapping = None) -> Dict[str, int]:
    """fqn -> 1-based output file index of a reference HF model (its index json, else its
    files' headers), as PyTorch's and Automodel's function of that name."""
    return _core.get_fqn_to_file_index_mapping(_os.fspath(reference_model_path),
                                                _rules(key_mapping))


def _extract_file_index(filename: str) -> int:
    """The 1-based index in "model-00002-of-00008.safetensors" (1 for model.safetensors and
    for names without one), as the Python seed parses it."""
    return _core.extract_file_index(filename)


_NUMPY_OF = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "uint16", "I64": "int64",
    "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32",
    "U16": "uint16", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "uint8", "F8_E5M2": "uint8",
    "F8_E8M0": "uint8", "F8_E4M3FNUZ": "uint8", "F8_E5M2FNUZ": "uint8",
}


class Reader:
    """A checkpoint scanned once for many slice reads (``read_slice`` scans per call)."""

    def __init__(self, path: str):
        self._r = _core.Reader(_os.fspath(path))

    def names(self) -> List[str]:
        return self._r.names()

    def info(self, fqn: str) -> Tuple[str, List[int]]:
        """(safetensors dtype, global shape)."""
        return self._r.info(fqn)

    def read(self, fqn: str, offsets: Sequence[int], sizes: Sequence[int], out=None):
        """Fills ``out`` (a C-contiguous numpy array or CPU torch tensor of ``sizes``) with the
        box of ``fqn`` at ``offsets``, reading only the stored bytes it needs, from any layout.
        Without ``out`` a numpy array is returned (BF16 and FP8 as their raw uint16/uint8
        bits: pass a torch.bfloat16 tensor to get bfloat16)."""
        offsets = [int(o) for o in offsets]
        sizes = [int(s) for s in sizes]
        if out is None:
            import numpy
            dtype, _ = self._r.info(fqn)
            out = numpy.empty(sizes, dtype=_NUMPY_OF.get(dtype, "uint8"))
        self._r.read(fqn, offsets, sizes, out)
        return out


def read_slice(path: str, fqn: str, offsets: Sequence[int], sizes: Sequence[int], out=None):
    """One box of one tensor from any layout (per-rank shards, HF files, a URL): see
    ``Reader.read``."""
    return Reader(path).read(fqn, offsets, sizes, out)

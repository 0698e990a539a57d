"""safetensors files: a deterministic writer that streams tensors to the file, a reader whose failures are one
line, and content digests of tensors (recorded in a file's metadata and checked on load)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .errors import LeadTermError
from .io import _oserror, atomic_path

_ST_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
              "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def save_safetensors_atomic(path: str | os.PathLike, tensors: dict, metadata: dict[str, str]) -> None:
    """Write the safetensors format (tensors in name order, header keys sorted): same inputs, same bytes.

    The format is written here rather than with ``safetensors.torch.save_file`` because upstream writes the
    ``__metadata__`` keys in a random (hash-map) order, so identical inputs gave different bytes
    (https://github.com/safetensors/safetensors/issues/584).  Tensors are streamed to the file one at a time
    from their own memory (one tensor moved to the CPU at a time; nothing is joined into one bytes object).
    """
    import torch

    header: dict = {"__metadata__": {str(k): str(v) for k, v in sorted(metadata.items())}}
    names, offset = sorted(tensors), 0
    for name in names:
        t = tensors[name]
        dt = str(t.dtype).replace("torch.", "")
        if dt not in _ST_DTYPES:
            raise LeadTermError(f"cannot write tensor {name!r} of dtype {dt} to {path}; convert it to float32 or float64")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[dt], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(struct.pack("<Q", len(head)))
                fh.write(head)
                for name in names:
                    t = tensors[name].detach()
                    if t.numel():
                        t = t.cpu().contiguous()
                        fh.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as e:
            raise _write_error(e, path) from None


def _write_error(e: OSError, path) -> LeadTermError:
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return LeadTermError(f"cannot write {path}: no space left on its device ({e.strerror}); nothing was written; "
                             "free some space or choose an output path on another disk")
    return _oserror(e, path)


def tensor_digests(tensors: dict) -> str:
    """A JSON map ``{name: sha256 of dtype, shape and bytes}`` of ``tensors`` (sorted): recorded in a file's
    metadata and checked on load, so that swapped, transposed or permuted tensors are refused."""
    return json.dumps({name: tensor_digest(tensors[name]) for name in sorted(tensors)}, sort_keys=True, separators=(",", ":"))


def tensor_digest(t) -> str:
    import hashlib

    import torch

    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{str(t.dtype).replace('torch.', '')}:{list(t.shape)}:".encode())
    if t.numel():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def check_tensor_digests(tensors: dict, recorded: str, what: str) -> None:
    """Refuse ``tensors`` whose content is not what :func:`tensor_digests` recorded (``what`` names the file)."""
    try:
        rec = json.loads(recorded)
        ok = isinstance(rec, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in rec.items())
    except ValueError:
        ok = False
    if not ok:
        raise LeadTermError(f"{what} has a malformed tensor_digests record; rebuild it")
    names = sorted(set(rec) | set(tensors))
    for name in names:
        if name not in tensors or name not in rec:
            raise LeadTermError(f"{what}: tensor {name!r} is " + ("missing" if name not in tensors else "not recorded")
                                + " (the file was altered); rebuild it")
        if tensor_digest(tensors[name]) != rec[name]:
            raise LeadTermError(f"{what}: tensor {name!r} does not match its recorded digest (the file was altered: "
                                "tensors swapped, transposed, permuted or edited); rebuild it")


def load_safetensors(path: str | os.PathLike, what: str) -> tuple[dict, dict[str, str]]:
    """Read all tensors and the metadata; any failure is a one-line :class:`LeadTermError`."""
    from safetensors import safe_open

    p = Path(path)
    if p.is_dir():
        raise LeadTermError(f"{what} {p} is a folder, not a file; give the path of the .safetensors file")
    if not p.is_file():
        raise LeadTermError(f"{what} {p} not found; check the path")
    try:
        with open(p, "rb") as fh:
            fh.read(8)
    except OSError as e:
        raise LeadTermError(f"cannot read {what} {p} ({e.strerror}); check its permissions") from None
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise LeadTermError(f"{p} is not a readable {what} (safetensors: {type(e).__name__}); it may be truncated or another kind of file, so rebuild it") from None
    return tensors, meta

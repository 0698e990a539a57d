"""safetensors files: a deterministic writer that streams tensors to the file, a reader whose failures are one
line, and the seal of a file: content digests of its tensors and one digest over all of its metadata (those
digests included), recorded in the metadata (:func:`seal`) and checked on load (:func:`check_seal`), so that
neither a tensor nor a metadata field can be swapped, edited, added or removed unnoticed."""

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


#: the metadata key of the digest over all the other metadata (:func:`seal`)
SEAL = "content_digest"
#: a version string as the package writes it (anything else in a file's metadata is refused)
VERSION_RE = r"[0-9]+(\.[0-9]+){0,3}([.+-]?[A-Za-z0-9]+){0,4}"


def metadata_digest(meta: dict) -> str:
    """sha256 of every metadata field but :data:`SEAL` (keys sorted, canonical JSON)."""
    import hashlib

    body = {k: v for k, v in meta.items() if k != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()


def seal(tensors: dict, meta: dict) -> dict:
    """``meta`` with ``tensor_digests`` (:func:`tensor_digests`) and :data:`SEAL`, the digest of all of it."""
    meta = {str(k): str(v) for k, v in meta.items() if k not in ("tensor_digests", SEAL)}
    meta["tensor_digests"] = tensor_digests(tensors)
    meta[SEAL] = metadata_digest(meta)
    return meta


def check_seal(tensors: dict, meta: dict, what: str, allowed=None) -> None:
    """Refuse a file whose seal is missing or does not match (``what`` names it): a metadata field or a tensor
    edited, added or removed.  ``allowed``: the metadata keys such a file may hold (others are refused)."""
    if allowed is not None:
        extra = sorted(set(meta) - set(allowed) - {"tensor_digests", SEAL})
        if extra:
            raise LeadTermError(f"{what} has unknown metadata {', '.join(map(repr, extra[:3]))} (the file was altered or "
                                "not written by tl_leadterm); rebuild it")
    if SEAL not in meta or "tensor_digests" not in meta:
        raise LeadTermError(f"{what} records no content digest (the file was altered, or written by an older version); "
                            "rebuild it")
    if meta[SEAL] != metadata_digest(meta):
        raise LeadTermError(f"{what}: its metadata does not match its recorded content digest (the file was altered: a "
                            "field edited, added or removed); rebuild it")
    check_tensor_digests(tensors, meta["tensor_digests"], what)


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

    from .io import input_path

    p = input_path(path, what, "give the path of the .safetensors file")
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

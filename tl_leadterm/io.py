"""Small file helpers: atomic writes, safetensors with validated metadata."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import LeadTermError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success.

    Nothing is half-written: a failure leaves ``path`` as it was (absent or old).
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LeadTermError(f"cannot create folder {parent}: {e.strerror}; choose a writable output path") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the mode a plain open() would (or the old file's)
        try:
            mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
            os.chmod(tmp_path, mode)
        except OSError:
            pass
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(o):
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except Exception:  # pragma: no cover
        pass
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_safetensors_atomic(path: str | os.PathLike, tensors: dict, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in metadata.items()})


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


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Check, without creating anything, that folder ``path`` exists writable or can be created.

    Used before the work starts so that a bad output path fails fast and a failing
    command leaves nothing behind (the folder is created when the output is written).
    """
    p = Path(path) if str(path) else Path(".")
    q = p
    while not q.exists():
        if q.parent == q:
            break
        q = q.parent
    if not q.is_dir():
        raise LeadTermError(f"cannot write to {p}: {q} is not a folder; choose a writable output path")
    if not os.access(q, os.W_OK | os.X_OK):
        raise LeadTermError(f"cannot write to {p}: {q} is not writable; choose a writable output path")
    return p


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and prove it is writable, before any work starts."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise LeadTermError(f"cannot write to output folder {p} ({e.strerror}); choose a writable --out") from None
    return p

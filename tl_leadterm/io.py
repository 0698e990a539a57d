"""File helpers: atomic files, staged result folders, deterministic safetensors, clean one-line failures.

* :func:`atomic_path` / ``write_*_atomic``: a file is written beside its target under a temporary
  name and moved into place only on success;
* :func:`staged_dir`: a results folder is built in a staging folder beside it and committed only
  when the whole command succeeds: a failed run leaves the folder exactly as it was, and a
  successful one replaces every file the command owns (:data:`OWNS`), removing the ones this
  run did not write, so no older output of the same command stays beside the new ones;
  anything else in the folder is left alone;
* temporary names carry the process id, and stale ones of dead processes (SIGKILL) are
  removed the next time the same target is written;
* :func:`save_safetensors_atomic` writes the safetensors format itself with sorted header
  keys, so identical tensors and metadata give identical bytes;
* every ``OSError`` becomes a one-line :class:`LeadTermError` that names the path.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import LeadTermError

#: the files and folders each command owns in its results folder (what a new run of it replaces)
OWNS = {
    "toy-train": frozenset({"toy.safetensors", "train.json", "monitor.jsonl"}),
    "analyze": frozenset({"analysis.csv", "analysis.json", "causal.csv", "causal.json", "head_ranking.csv"}),
    "sweep": frozenset({"analysis.csv", "analysis.json", "head_ranking.csv"}),
    "demo": frozenset({
        "analysis.csv", "analysis.json", "head_ranking.csv", "model_analysis.csv", "model_analysis.json",
        "neox_analysis.csv", "neox_analysis.json", "neox_associations.csv", "associations.csv", "attention_scales.csv",
        "views.json", "summary.json", "basis.safetensors", "toy.safetensors", "monitor.jsonl", "report.html", "plots"}),
}
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.(?:tmp|staging|old)$")


def _oserror(e: OSError, path, what: str = "write") -> LeadTermError:
    return LeadTermError(f"cannot {what} {path} ({e.strerror or type(e).__name__}); choose a writable output path")


def _tmp_name(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(path: str | os.PathLike) -> None:
    """Remove temporary files and folders of this package's naming for ``path`` left by dead processes."""
    path = Path(path)
    try:
        entries = list(path.parent.iterdir()) if path.parent.is_dir() else []
    except OSError:
        return
    for q in entries:
        m = _TMP.match(q.name)
        if m and m.group("name") == path.name and int(m.group("pid")) != os.getpid() and not _alive(int(m.group("pid"))):
            shutil.rmtree(q, ignore_errors=True) if q.is_dir() and not q.is_symlink() else q.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success.

    Nothing is half-written: a failure leaves ``path`` as it was (absent or old).
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise LeadTermError(f"cannot write {path}: it is a folder; give a file path")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LeadTermError(f"cannot create folder {parent}: {e.strerror}; choose a writable output path") from None
    clean_stale(path)
    tmp_path = _tmp_name(path, "tmp")
    try:
        tmp_path.touch()
    except OSError as e:
        raise _oserror(e, path) from None
    try:
        yield tmp_path
        # give the result the mode a plain open() would (or the old file's)
        try:
            mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
            os.chmod(tmp_path, mode)
        except OSError:
            pass
        try:
            os.replace(tmp_path, path)
        except OSError as e:
            raise _oserror(e, path) from None
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        try:
            tmp.write_text(text, encoding="utf-8")
        except OSError as e:
            raise _oserror(e, path) from None


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


# ---------------------------------------------------------------------------
# staged results folders
# ---------------------------------------------------------------------------
@contextmanager
def staged_dir(out: str | os.PathLike, owns: Iterable[str], *, inputs: Iterable = ()) -> Iterator[Path]:
    """Build a results folder in a staging folder beside ``out``; commit it only if the block succeeds.

    ``owns``: the names the command writes (:data:`OWNS`).  On success every owned name the new
    run did not write is removed from ``out`` and the new files replace the old: the folder holds
    one run of the command.  On failure ``out`` is exactly as it was and the staging folder is gone.
    An owned path that is one of ``inputs`` is refused up front.
    """
    out, owns = Path(out), frozenset(owns)
    check_writable_dir(out)
    if out.exists() and not out.is_dir():
        raise LeadTermError(f"cannot write to {out}: it is a file, not a folder; choose an output folder")
    refuse_overwriting_inputs([out / n for n in owns], inputs)
    clean_stale(out)
    stage = _tmp_name(out, "staging")
    try:
        stage.mkdir(parents=True)
    except OSError as e:
        raise _oserror(e, out, "create a folder beside") from None
    try:
        yield stage
        _commit(stage, out, owns)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _commit(stage: Path, out: Path, owns: frozenset) -> None:
    new = {p.name for p in stage.iterdir()}
    stray = new - owns
    if stray:  # a programming error, not a user one: the command wrote a file it does not own
        raise RuntimeError(f"results of names {sorted(stray)} are not declared in OWNS")
    try:
        out.mkdir(parents=True, exist_ok=True)
        trash = _tmp_name(out, "old")
        trash.mkdir()
    except OSError as e:
        raise _oserror(e, out) from None
    old_moved: list[str] = []
    new_moved: list[str] = []
    try:
        for name in sorted(owns):
            if (out / name).exists() or (out / name).is_symlink():
                os.replace(out / name, trash / name)
                old_moved.append(name)
        for name in sorted(new):
            os.replace(stage / name, out / name)
            new_moved.append(name)
    except OSError as e:   # put everything back: the folder must be exactly as it was
        for name in reversed(new_moved):
            try:
                os.replace(out / name, stage / name)
            except OSError:
                pass
        lost = []
        for name in reversed(old_moved):
            try:
                os.replace(trash / name, out / name)
            except OSError:
                lost.append(name)
        if not lost:
            shutil.rmtree(trash, ignore_errors=True)
        raise LeadTermError(f"cannot write {out} ({e.strerror or type(e).__name__}); nothing was changed"
                            + (f", except that {', '.join(lost)} could not be moved back from {trash}" if lost else "")
                            + "; choose a writable output path") from None
    shutil.rmtree(trash, ignore_errors=True)


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


def refuse_overwriting_inputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike | None]) -> None:
    """One-line error when an output path is one of the command's inputs (it would be overwritten)."""
    ins = {}
    for i in inputs:
        if i is not None and str(i) and not str(i).startswith(("builtin:", "hf:", "toy:")) and Path(i).exists():
            ins[Path(i).resolve()] = str(i)
    for o in outputs:
        r = Path(o).resolve()
        if r in ins:
            raise LeadTermError(f"the output {o} is the input {ins[r]}; writing it would destroy the input, so choose another output path")


def resolve_device(device=None):
    """``device`` as a ``torch.device`` (default cpu); an unknown or unavailable one is a one-line error."""
    import torch

    try:
        dev = torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError):
        raise LeadTermError(f"unknown {{device}} {device!r}; use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise LeadTermError(f"{{device}} must be cpu or cuda, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LeadTermError("{device} cuda was asked for but CUDA is not available on this machine; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise LeadTermError(f"{{device}} {device} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def available_bytes(device=None) -> int:
    """Memory available for a computation on ``device`` (RAM for CPU)."""
    import torch

    device = torch.device(device or "cpu")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemAvailable", info.get("MemFree", 8 * 2**30))
    except OSError:  # pragma: no cover
        return 8 * 2**30


# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------
_ST_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
              "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def save_safetensors_atomic(path: str | os.PathLike, tensors: dict, metadata: dict[str, str]) -> None:
    """Write the safetensors format (tensors in name order, header keys sorted): same inputs, same bytes."""
    import torch

    header: dict = {"__metadata__": {str(k): str(v) for k, v in sorted(metadata.items())}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST_DTYPES[str(t.dtype).replace("torch.", "")], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(struct.pack("<Q", len(head)))
                fh.write(head)
                for raw in blobs:
                    fh.write(raw)
        except OSError as e:
            raise _oserror(e, path) from None


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

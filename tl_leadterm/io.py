"""File helpers: atomic files, staged result folders, deterministic safetensors, clean one-line failures.

* :func:`atomic_path` / ``write_*_atomic``: a file is written beside its target under a temporary
  name and moved into place only on success;
* :func:`staged_dir`: a results folder is built in a hidden staging folder (inside it when it
  exists, else beside it) and committed only when the whole command succeeds: a failed run
  leaves the folder exactly as it was, and a successful one replaces every file the command owns
  (:data:`OWNS`), removing the ones this run did not write, so no older output of the same
  command stays beside the new ones; anything else in the folder is left alone;
* a commit moves the old files into a backup folder with a journal before it moves the new ones
  in: a commit killed midway (SIGKILL) is undone by the next run that writes to the same folder
  (:func:`recover_commit`), failing or not, so the previous complete results are never lost;
* temporary names carry the process id, and stale ones of dead processes (SIGKILL) are
  removed the next time the same target is written;
* paths are made absolute first, so ``.`` and names without a folder (``report.html``) work;
* safetensors files (:mod:`tl_leadterm.tensorfiles`, importable from here too) are written with sorted header
  keys, so identical tensors and metadata give identical bytes;
* every ``OSError`` (a full disk included) becomes a one-line :class:`LeadTermError` that names the path;
* every path a command or reader *reads* goes through :func:`input_path`, the one rule for inputs: a path that
  does not exist, a broken link, a folder where a file is needed and a device or other special file
  (``/dev/null``) are each named as such, in one line that names what the path was given as.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import LeadTermError

#: the files and folders each command owns in its results folder (what a new run of it replaces)
OWNS = {
    "toy-train": frozenset({"toy.safetensors", "train.json", "monitor.jsonl"}),
    "analyze": frozenset({"analysis.csv", "analysis.json", "causal.csv", "causal.json", "head_ranking.csv", "retention.csv"}),
    "sweep": frozenset({"analysis.csv", "analysis.json", "head_ranking.csv", "retention.csv"}),
    "demo": frozenset({
        "analysis.csv", "analysis.json", "head_ranking.csv", "model_analysis.csv", "model_analysis.json",
        "neox_analysis.csv", "neox_analysis.json", "neox_associations.csv", "neox_head_ranking.csv", "neox_retention.csv",
        "neox_checkpoints", "retention.csv", "associations.csv", "attention_scales.csv",
        "views.json", "summary.json", "basis.safetensors", "toy.safetensors", "monitor.jsonl", "report.html", "plots"}),
}
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.(?P<kind>tmp|staging|old|del)$")
#: hidden name under which a command stages inside an existing results folder (``.tl_leadterm.PID.HEX.staging``)
INSIDE_KEY = "tl_leadterm"
#: the journal of a commit, inside its backup folder (``.NAME.PID.HEX.old``): what to undo after a kill
JOURNAL = ".commit.json"
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _oserror(e: OSError, path, what: str = "write") -> LeadTermError:
    if e.errno in _FULL:
        return LeadTermError(f"cannot {what} {path}: no space left on its device ({e.strerror or 'disk full'}); nothing "
                             "was changed; free some space or choose an output path on another disk")
    if e.errno == errno.EROFS:
        return LeadTermError(f"cannot {what} {path}: the file system is read-only; choose a writable output path")
    return LeadTermError(f"cannot {what} {path} ({e.strerror or type(e).__name__}); choose a writable output path")


def _tmp_name(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}")


def _abs(path: str | os.PathLike) -> Path:
    """``path`` made absolute and normalised (``.``, ``..`` and trailing slashes resolved, symlinks kept), so that
    every path has a name and a parent folder (``--out .``, ``--out report.html``)."""
    return Path(os.path.abspath(os.fspath(path) or "."))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(path: str | os.PathLike) -> None:
    """Tidy what dead processes (SIGKILL) left for ``path``: temporary files and staging folders are removed; the
    backup of a commit that was killed midway (``.NAME.PID.HEX.old``) is put back (:func:`recover_commit`)."""
    path = _abs(path)
    try:
        entries = sorted(path.parent.iterdir()) if path.parent.is_dir() else []
    except OSError:
        return
    for q in entries:
        m = _TMP.match(q.name)
        if not (m and m.group("name") == path.name and int(m.group("pid")) != os.getpid() and not _alive(int(m.group("pid")))):
            continue
        if m.group("kind") == "old" and q.is_dir() and not q.is_symlink():
            recover_commit(q)
        else:
            shutil.rmtree(q, ignore_errors=True) if q.is_dir() and not q.is_symlink() else q.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success.

    Nothing is half-written: a failure leaves ``path`` as it was (absent or old); an ``OSError`` while the
    temporary file is written (a full disk included) is a one-line :class:`LeadTermError` that names ``path``.
    """
    shown = path
    path = _abs(path)
    parent = path.parent
    if path.is_dir():
        raise LeadTermError(f"cannot write {shown}: it is a folder; give a file path")
    if path.exists() and not path.is_file():
        raise LeadTermError(f"cannot write {shown}: it is a device or other special file, not a regular file; "
                            "give a file path")
    check_writable_dir(parent)
    missing = [p for p in (parent, *parent.parents) if not p.exists()]
    done = False
    try:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _oserror(e, parent, "create folder") from None
        clean_stale(path)
        tmp_path = _tmp_name(path, "tmp")
        try:
            tmp_path.touch()
        except OSError as e:
            raise _oserror(e, shown) from None
        try:
            try:
                yield tmp_path
            except OSError as e:
                raise _oserror(e, shown) from None
            # give the result the mode a plain open() would (or the old file's)
            try:
                mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
                os.chmod(tmp_path, mode)
            except OSError:
                pass
            try:
                os.replace(tmp_path, path)
            except OSError as e:
                raise _oserror(e, shown) from None
            done = True
        finally:
            tmp_path.unlink(missing_ok=True)
    finally:
        if not done:
            for p in missing:             # folders created for this file only: removed again, deepest first
                try:
                    p.rmdir()
                except OSError:
                    break


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
def staged_dir(out: str | os.PathLike, owns: Iterable[str], *, inputs: Iterable = (),
               key: str | None = None) -> Iterator[Path]:
    """Build a results folder in a staging folder; commit it into ``out`` only if the block succeeds.

    ``owns``: the names the command writes (:data:`OWNS`).  On success every owned name the new
    run did not write is removed from ``out`` and the new files replace the old: the folder holds
    one run of the command; anything else in ``out`` is left alone.  On failure ``out`` is exactly as
    it was (a folder this call had to create is removed again) and the staging folder is gone.

    The staging folder is hidden inside ``out`` when it exists (``out/.KEY.PID.HEX.staging``; ``key``
    defaults to :data:`INSIDE_KEY`; ``report`` uses its file's name), else beside it.  The commit moves
    the old owned files into a backup folder with a journal, then the new ones in: a commit killed midway
    is undone by the next run that writes to ``out`` (:func:`clean_stale`, :func:`recover_commit`), which
    puts the previous complete results back before it starts.  An owned path that is one of ``inputs`` is
    refused up front, and so is an ``out`` that is a file.
    """
    shown, owns = out, frozenset(owns)
    out = _abs(out)
    check_writable_dir(shown)
    if out.exists() and not out.is_dir():
        raise LeadTermError(f"cannot write to {shown}: it is a file, not a folder; choose an output folder")
    refuse_overwriting_inputs([out / n for n in owns], inputs)
    anchor = out / (key or INSIDE_KEY)
    clean_stale(anchor)
    if out.name:
        clean_stale(out)
    if not out.is_dir():
        anchor = out                      # stage beside the folder, which is created only by the commit
    missing = [p for p in (anchor.parent, *anchor.parent.parents) if not p.exists()]
    stage = _tmp_name(anchor, "staging")
    committed = False
    try:
        try:
            stage.mkdir(parents=True)
        except OSError as e:
            raise _oserror(e, shown, "create a staging folder for") from None
        try:
            yield stage
        except OSError as e:   # a full disk, or any file the command could not read or write: one line, nothing changed
            if e.errno in _FULL or e.errno == errno.EROFS:
                raise _oserror(e, shown) from None
            raise LeadTermError(f"{e.filename or shown}: {e.strerror or type(e).__name__}; nothing was changed in "
                                f"{shown}") from None
        _commit(stage, out, owns, anchor, shown)
        committed = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not committed:
            for p in missing:             # folders this call created for its staging folder, deepest first
                try:
                    p.rmdir()
                except OSError:
                    break


def _write_journal(trash: Path, **entries) -> None:
    tmp = trash / (JOURNAL + ".tmp")
    tmp.write_text(json.dumps(entries, sort_keys=True), encoding="utf-8")
    os.replace(tmp, trash / JOURNAL)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def _commit(stage: Path, out: Path, owns: frozenset, anchor: Path, shown) -> None:
    new = sorted(p.name for p in stage.iterdir())
    stray = set(new) - owns
    if stray:  # a programming error, not a user one: the command wrote a file it does not own
        raise RuntimeError(f"results of names {sorted(stray)} are not declared in OWNS")
    created = not out.is_dir()
    target = "." if anchor.parent == out else out.name
    trash = _tmp_name(anchor, "old")
    try:
        out.mkdir(parents=True, exist_ok=True)
        trash.mkdir()
        _write_journal(trash, target=target, phase="old", new=new, created=created)
    except OSError as e:
        shutil.rmtree(trash, ignore_errors=True)
        raise _oserror(e, shown) from None
    old_moved: list[str] = []
    new_moved: list[str] = []
    try:
        for name in sorted(owns):
            if (out / name).exists() or (out / name).is_symlink():
                os.replace(out / name, trash / name)
                old_moved.append(name)
        _write_journal(trash, target=target, phase="new", new=new, created=created)
        for name in new:
            os.replace(stage / name, out / name)
            new_moved.append(name)
    except BaseException as e:   # an error or a signal: put everything back, the folder must be exactly as it was
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
            if created:
                try:
                    out.rmdir()
                except OSError:
                    pass
        if not isinstance(e, OSError):
            raise
        raise LeadTermError(f"cannot write {shown} ({e.strerror or type(e).__name__}); nothing was changed"
                            + (f", except that {', '.join(lost)} could not be moved back from {trash}" if lost else "")
                            + "; choose a writable output path") from None
    done = _tmp_name(anchor, "del")        # the commit is complete: the backup is garbage from here on
    try:
        os.replace(trash, done)
    except OSError:
        done = trash
    shutil.rmtree(done, ignore_errors=True)


def _plain_name(n) -> bool:
    return isinstance(n, str) and n not in ("", ".", "..") and "/" not in n and "\0" not in n and os.sep not in n


def recover_commit(trash: str | os.PathLike) -> None:
    """Undo a commit that was killed midway, from its backup folder ``.NAME.PID.HEX.old`` and journal.

    Killed while the old files were being moved out: they are moved back.  Killed while the new files
    were being moved in: the new ones (an incomplete run) are removed and the old ones moved back.  The
    previous complete results are then in place again and the backup is removed.  A name that cannot be
    put back (a file of that name appeared since) stays in the backup and a warning says where.
    """
    trash = Path(trash)
    m = _TMP.match(trash.name)
    try:
        j = json.loads((trash / JOURNAL).read_text(encoding="utf-8"))
        ok = (isinstance(j, dict) and j.get("phase") in ("old", "new")
              and (j.get("target") == "." or _plain_name(j.get("target")))
              and isinstance(j.get("new"), list) and all(_plain_name(n) for n in j["new"]))
    except (OSError, ValueError):
        j, ok = None, False
    try:
        entries = [p for p in trash.iterdir() if p.name not in (JOURNAL, JOURNAL + ".tmp")]
    except OSError:
        return
    if not ok:
        if not entries:                   # killed before anything was moved
            shutil.rmtree(trash, ignore_errors=True)
            return
        j = {"target": m.group("name") if m else None, "phase": "old", "new": [], "created": False}  # an older backup
        if not _plain_name(j["target"]):
            return
    target = trash.parent if j["target"] == "." else trash.parent / j["target"]
    acted = False
    try:
        if j["phase"] == "new":
            for name in j["new"]:
                p = target / name
                if p.exists() or p.is_symlink():
                    _remove(p)
                    acted = True
        target.mkdir(parents=True, exist_ok=True)
        kept = []
        for p in sorted(entries):
            if (target / p.name).exists() or (target / p.name).is_symlink():
                kept.append(p.name)
            else:
                os.replace(p, target / p.name)
                acted = True
    except OSError as e:
        raise LeadTermError(f"a killed earlier run left the previous results of {target} in {trash}, and they cannot be "
                            f"put back ({e.strerror}); move them back by hand") from None
    if kept:
        warnings.warn(f"a killed earlier run left the previous results of {target} in {trash}; {', '.join(kept)} "
                      "could not be put back (a file of that name exists): move them by hand", stacklevel=2)
        return
    shutil.rmtree(trash, ignore_errors=True)
    if j.get("created") is True:
        try:
            target.rmdir()                # only if empty: the folder did not exist before the killed commit
        except OSError:
            pass
    if acted:
        warnings.warn(f"a run writing to {target} was killed while it committed its results; its partial results were "
                      "removed and the previous results were put back", stacklevel=2)


def input_path(path: str | os.PathLike, what: str, hint: str = "check the path", *, folder: bool = False,
               missing_ok: bool = False) -> Path:
    """The one rule for every input path: ``path`` as a :class:`~pathlib.Path` if it is a regular file (or, with
    ``folder=True``, a folder), else a one-line error naming ``what`` it was given as and what it is: not found,
    a broken symbolic link, a folder, or a device or other special file (``/dev/null``, a FIFO), followed by
    ``hint``.  ``missing_ok=True``: a path that does not exist is returned as it is (it may be a hub name or a
    prefix the caller resolves), but one that exists must still be a file (or folder)."""
    p = Path(os.fspath(path))
    if p.is_symlink() and not p.exists():
        raise LeadTermError(f"{what} {p} is a broken symbolic link; {hint}")
    if not p.exists():
        if missing_ok:
            return p
        raise LeadTermError(f"{what} {p} not found; {hint}")
    if p.is_dir():
        if folder:
            return p
        raise LeadTermError(f"{what} {p} is a folder, not a file; {hint}")
    if not p.is_file():
        raise LeadTermError(f"{what} {p} is a device or special file, not a {'file or folder' if folder else 'file'}; {hint}")
    return p


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Check, without creating anything, that folder ``path`` exists writable or can be created.

    Used before the work starts so that a bad output path fails fast and a failing
    command leaves nothing behind (the folder is created when the output is written).
    """
    p = Path(path) if str(path) else Path(".")
    q = _abs(p)
    while not q.exists() and not q.is_symlink():
        if q.parent == q:
            break
        q = q.parent
    if q.is_symlink() and not q.exists():
        raise LeadTermError(f"cannot write to {p}: {q} is a broken symbolic link; choose a writable output path")
    if not q.is_dir():
        kind = "a file" if q.is_file() else "a device or other special file"
        raise LeadTermError(f"cannot write to {p}: " + (f"it is {kind}" if q == _abs(p) else f"{q} is {kind}")
                            + ", not a folder; choose an output folder")
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
# safetensors: the writer and reader live in tensorfiles.py (imported from here too)
# ---------------------------------------------------------------------------
def __getattr__(name: str):
    if name in ("save_safetensors_atomic", "load_safetensors", "tensor_digests", "check_tensor_digests"):
        from . import tensorfiles
        return getattr(tensorfiles, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Where the training monitor's records go: one small protocol and three sinks.

A sink is any object with ``write(record)`` and ``close()`` (:class:`Sink`); the
:class:`~tl_leadterm.monitor.TrainingMonitor` hands every record to each of its sinks, in order,
and closes them when it is closed.  A record is the monitor's dict: ``step``, ``loss``, ``kind``
and groups of named numbers (``similarity``, ``explained``, ``residual_norm`` (toy, absolute),
``residual_rel_norm`` (real models, relative), ``percentile``, ``null_q95``,
``coefficient_ratio``, ``measures``), ``None`` where a value is undefined.

:class:`JSONLSink`
    One JSON object per line (``json.dumps(record, allow_nan=False)``), flushed after each
    record: the monitor's file format; the same training writes the same bytes.
:class:`TensorBoardSink`
    Scalars ``group/name`` (and ``loss``) at ``step`` through ``torch.utils.tensorboard``
    (needs ``pip install tensorboard``).
:class:`WandbSink`
    The same scalars logged to a Weights & Biases run at ``step`` (needs
    ``pip install tl-leadterm[wandb]``; ``WANDB_MODE=offline`` writes the run to a local folder
    only).  It opens its own run (``wandb.init(**kwargs)``) and finishes it on ``close()``, or logs
    to a run you pass in and leaves it open.

A sink that cannot start (a path that cannot be opened, a package that is not installed) raises
a one-line :class:`~tl_leadterm.errors.LeadTermError` when it is built; once training runs the
monitor turns a sink's failures into warnings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

from .errors import LeadTermError

#: the record groups whose named numbers are logged as scalars ``group/name``
GROUPS = ("similarity", "explained", "residual_norm", "residual_rel_norm", "coefficient_ratio", "measures",
          "percentile", "null_q95")


@runtime_checkable
class Sink(Protocol):
    """Receives the monitor's records: ``write(record)`` once per logged step, ``close()`` at the end."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """The defined numbers of a record as ``(tag, value)``: ``loss`` and ``group/name`` (``None`` values skipped)."""
    if record.get("loss") is not None:
        yield "loss", float(record["loss"])
    for group in GROUPS:
        for name, v in (record.get(group) or {}).items():
            if v is not None:
                yield f"{group}/{name}", float(v)


class JSONLSink:
    """Records as JSON lines in ``path`` (created, or truncated unless ``append``; parent folders made)."""

    def __init__(self, path: str | os.PathLike, *, append: bool = False):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a" if append else "w", encoding="utf-8")
        except OSError as e:
            raise LeadTermError(f"cannot open monitor log {self.path} for writing ({e.strerror}); choose a writable path") from None

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            raise ValueError(f"{self.path} is closed")
        self._fh.write(json.dumps(record, allow_nan=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.close()

    def __repr__(self) -> str:
        return f"JSONLSink({str(self.path)!r})"


class TensorBoardSink:
    """Scalars in a TensorBoard log folder ``log_dir`` (``torch.utils.tensorboard.SummaryWriter``)."""

    def __init__(self, log_dir: str | os.PathLike, **kwargs):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LeadTermError("TensorBoard logging needs the tensorboard package: pip install tensorboard "
                                "(or pip install tl-leadterm[tensorboard])") from None
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(str(self.log_dir), **kwargs)

    def write(self, record: dict[str, Any]) -> None:
        for tag, v in scalars(record):
            self._writer.add_scalar(tag, v, record["step"])

    def close(self) -> None:
        if self._writer is not None:
            w, self._writer = self._writer, None
            w.close()

    def __repr__(self) -> str:
        return f"TensorBoardSink({str(self.log_dir)!r})"


class WandbSink:
    """Scalars in a Weights & Biases run: ``run`` if given (left open), else ``wandb.init(**init_kwargs)``
    (e.g. ``project=``, ``dir=``, ``name=``, ``config=``; finished on :meth:`close`)."""

    def __init__(self, run=None, **init_kwargs):
        try:
            import wandb
        except ImportError:
            raise LeadTermError("Weights & Biases logging needs the wandb package: pip install tl-leadterm[wandb]") from None
        self._owned = run is None
        try:
            self.run = wandb.init(**init_kwargs) if run is None else run
        except LeadTermError:
            raise
        except Exception as e:
            raise LeadTermError(f"wandb.init failed ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                                "log in with 'wandb login', or set WANDB_MODE=offline to log to a local folder") from None

    def write(self, record: dict[str, Any]) -> None:
        self.run.log(dict(scalars(record)), step=int(record["step"]), commit=True)   # the row now, not at the next step

    def close(self) -> None:
        if self.run is not None and self._owned:
            self.run.finish()
        self.run = None

    def __repr__(self) -> str:
        return f"WandbSink({getattr(self.run, 'id', None)!r})"

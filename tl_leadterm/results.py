"""Reading a results folder back (for the report): every file is validated, types of columns included, and
anything wrong is refused in one line that names the file and the column."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from .errors import LeadTermError, require
from .visual import CVView

_REBUILD = "rebuild it with 'tl-leadterm demo', 'analyze' or 'sweep'"


def read_csv(path: Path, *, numeric: tuple[str, ...] = (), text: tuple[str, ...] = (), what: str = "table") -> pd.DataFrame:
    """A CSV table with the ``numeric`` and ``text`` columns present and of those types (empty cells allowed)."""
    try:
        df = pd.read_csv(path, keep_default_na=True)
    except Exception as e:
        raise LeadTermError(f"{path} is not a readable CSV {what} ({type(e).__name__}); {_REBUILD}") from None
    missing = [c for c in (*numeric, *text) if c not in df.columns]
    require(not missing, f"{path} lacks columns {', '.join(missing)}; it is not a tl_leadterm {what}")
    for c in numeric:
        vals = pd.to_numeric(df[c], errors="coerce")
        bad = vals.isna() & df[c].notna()
        if bad.any():
            raise LeadTermError(f"{path}: column {c!r} holds a non-number ({df[c][bad].iloc[0]!r} in line {int(bad.idxmax()) + 2}); {_REBUILD}")
        df[c] = vals.astype("float64")
    for c in text:
        df[c] = df[c].fillna("").astype(str)
    return df


def read_table(path: Path) -> pd.DataFrame:
    """An analysis table (:mod:`tl_leadterm.analysis.table`)."""
    df = read_csv(path, numeric=("layer", "head", "value"), text=("checkpoint", "site", "measure"), what="analysis table")
    for c in ("target", "detail"):
        df[c] = df[c].fillna("").astype(str) if c in df else ""
    if "extension" in df:
        ext = df["extension"].map(lambda v: {True: True, False: False, "True": True, "False": False}.get(v))
        require(ext.notna().all(), f"{path}: column 'extension' must hold True or False; {_REBUILD}")
        df["extension"] = ext.astype(bool)
    else:
        df["extension"] = False
    return df


def read_json(path: Path, kind: type, what: str):
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise LeadTermError(f"{path} is not valid JSON; {_REBUILD}") from None
    require(isinstance(obj, kind), f"{path} must hold a JSON {what}; {_REBUILD}")
    return obj


def read_views(path: Path) -> list[tuple[str, CVView]]:
    items = read_json(path, list, "list of views")
    out = []
    for i, d in enumerate(items):
        require(isinstance(d, dict) and isinstance(d.get("section", "Views"), str),
                f"{path}: view {i} must be an object with a text 'section'; {_REBUILD}")
        out.append((d.get("section", "Views"), CVView.from_json(d)))
    return out


def read_monitor(path: Path) -> list[dict]:
    """Monitor records: a torn last line is skipped; a record of the wrong shape is refused."""
    from .monitor import read_records

    recs = read_records(path)
    for i, r in enumerate(recs):
        require(isinstance(r, dict) and isinstance(r.get("step"), int), f"{path}: record {i + 1} has no integer 'step'; "
                                                                        "it is not a tl_leadterm monitor log")
        for group in ("similarity", "explained", "residual_norm"):
            vals = r.get(group) or {}
            require(isinstance(vals, dict) and all(v is None or (isinstance(v, (int, float)) and math.isfinite(v))
                                                   for v in vals.values()),
                    f"{path}: record {i + 1}, {group!r} must map names to numbers or null")
    return recs

"""Reading a results folder back (for the report).

A results folder may come from someone else, so every field of every file is untrusted: it is checked
against what this package writes (allow-lists of columns, keys, names and types, integer layers and heads,
unique rows) and anything else is refused in one line that names the file, the column and the row.  Only
the columns the report shows are kept.  Text is escaped where it is shown (:mod:`tl_leadterm.report`) and
nothing from a file is ever put into code (:mod:`tl_leadterm.visual.views`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from .errors import LeadTermError, require
from .theory import LENS_NAMES, current_keys
from .visual import CVView

_REBUILD = "rebuild it with 'tl-leadterm demo', 'analyze' or 'sweep'"
#: names (sites, measures, targets, monitor series) are identifiers with dots and slashes: ``key_query``,
#: ``context.T``, ``key_query_resid/L0/H3`` (the key scheme, :func:`tl_leadterm.theory.measure_key`), ``qk.0.3``
NAME = re.compile(r"^(model:)?[A-Za-z_][A-Za-z0-9_./]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_INDEX = 1_000_000        # layers and heads
MAX_TEXT = 100_000           # characters in one cell
#: the columns of each table the report reads: (numeric, text), then optional ones
ANALYSIS_COLUMNS = ("checkpoint", "lens", "reference", "layer", "head", "site", "measure", "value", "target", "null_mean",
                    "null_q05", "null_q95", "percentile", "rank", "row_token", "col_token", "detail", "extension")
#: columns a table written before lenses and nulls lacks (filled with their defaults)
LATER_COLUMNS = ("lens", "reference", "null_mean", "null_q05", "null_q95", "percentile", "rank", "row_token", "col_token")
SCALE_COLUMNS = ("model", "layer", "head", "scale", "aligned", "fit_residual", "pattern_tv", "uniform_tv")
ASSOCIATION_COLUMNS = ("token", "source", "rank", "associate", "value", "description")
MONITOR_GROUPS = ("similarity", "explained", "residual_norm", "residual_rel_norm", "percentile", "null_q95")
MAX_SUMMARY = 200            # settings in summary.json


def _bad(path, msg: str) -> LeadTermError:
    return LeadTermError(f"{path}: {msg}; {_REBUILD}")


def read_csv(path: Path, *, numeric: tuple[str, ...] = (), text: tuple[str, ...] = (), optional: tuple[str, ...] = (),
             integer: tuple[str, ...] = (), names: tuple[str, ...] = (), what: str = "table") -> pd.DataFrame:
    """A CSV table with the ``numeric`` and ``text`` columns present and of those types, empty cells allowed
    (NaN in numbers, ``""`` in text); cells are read as written (a word such as ``nan`` or ``null`` stays text).

    ``optional``: columns kept when present (numeric if also in ``numeric``...); every other column is dropped.
    ``integer``: numeric columns whose cells must be empty or whole numbers in ``[0, MAX_INDEX]``;
    ``names``: text columns whose non-empty cells must be names (:data:`NAME`).
    """
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[], encoding="utf-8")
    except UnicodeDecodeError:
        raise _bad(path, f"is not UTF-8 text, so not a tl_leadterm {what}") from None
    except Exception as e:
        raise LeadTermError(f"{path} is not a readable CSV {what} ({type(e).__name__}); {_REBUILD}") from None
    require(len(set(df.columns)) == len(df.columns), f"{path} repeats a column name; it is not a tl_leadterm {what}")
    missing = [c for c in (*numeric, *text) if c not in df.columns and c not in optional]
    require(not missing, f"{path} lacks columns {', '.join(missing)}; it is not a tl_leadterm {what}")
    keep = [c for c in dict.fromkeys((*numeric, *text)) if c in df.columns]
    df = df[keep].copy()
    for c in keep:
        cells = df[c]
        if c in numeric:
            s = cells.str.strip()
            vals = pd.to_numeric(s.where(s != "", None), errors="coerce")
            bad = vals.isna() & (s != "") & ~s.str.lower().isin(["nan", "-nan", "+nan"])
            if bad.any():
                i = int(bad.to_numpy().nonzero()[0][0])
                raise _bad(path, f"column {c!r} holds a non-number ({cells.iloc[i][:40]!r} in line {i + 2})")
            vals = vals.astype("float64")
            if c in integer:
                ok = vals.isna() | ((vals >= 0) & (vals <= MAX_INDEX) & (vals == vals.round()))
                if not ok.all():
                    i = int((~ok).to_numpy().nonzero()[0][0])
                    raise _bad(path, f"column {c!r} must hold whole numbers from 0 to {MAX_INDEX} "
                                     f"({cells.iloc[i][:40]!r} in line {i + 2})")
            df[c] = vals
        else:
            long = cells.str.len() > MAX_TEXT
            ctrl = cells.str.contains(_CONTROL)
            bad = long | ctrl
            if bad.any():
                i = int(bad.to_numpy().nonzero()[0][0])
                raise _bad(path, f"column {c!r}, line {i + 2}: " + ("text longer than 100000 characters" if long.iloc[i]
                                                                      else "control characters in the text"))
            if c in names:
                ok = (cells == "") | cells.str.match(NAME)
                if not ok.all():
                    i = int((~ok).to_numpy().nonzero()[0][0])
                    raise _bad(path, f"column {c!r} must hold names (letters, digits, '_' and '.'), "
                                     f"got {cells.iloc[i][:40]!r} in line {i + 2}")
    return df


def read_table(path: Path) -> pd.DataFrame:
    """An analysis table (:mod:`tl_leadterm.analysis.table`): its nine columns, validated (``target``, ``detail`` and
    ``extension`` may be absent); sites, measures and targets are names, layers and heads whole numbers."""
    df = read_csv(path, numeric=("layer", "head", "value", "null_mean", "null_q05", "null_q95", "percentile", "rank"),
                  text=("checkpoint", "lens", "reference", "site", "measure", "target", "row_token", "col_token", "detail",
                        "extension"),
                  optional=("target", "detail", "extension") + LATER_COLUMNS, integer=("layer", "head", "rank"),
                  names=("site", "measure", "target", "lens"), what="analysis table")
    if "lens" in df:
        bad = ~df["lens"].isin(("",) + LENS_NAMES)
        if bad.any():
            raise _bad(path, f"column 'lens' must hold one of {', '.join(LENS_NAMES)} (line {int(bad.to_numpy().nonzero()[0][0]) + 2})")
    for c in ("percentile",):
        if c in df:
            v = df[c]
            bad = v.notna() & ((v < 0) | (v > 1))
            if bad.any():
                raise _bad(path, f"column {c!r} must lie in [0, 1] (line {int(bad.to_numpy().nonzero()[0][0]) + 2})")
    for c in ("site", "measure"):
        empty = df[c] == ""
        if empty.any():
            raise _bad(path, f"column {c!r} is empty in line {int(empty.to_numpy().nonzero()[0][0]) + 2}")
    for c in ("target", "detail"):
        if c not in df:
            df[c] = ""
    if "extension" in df:
        ext = df["extension"].map({"True": True, "False": False, "true": True, "false": False, "": False})
        require(ext.notna().all(), f"{path}: column 'extension' must hold True or False; {_REBUILD}")
        df["extension"] = ext.astype(bool)
    else:
        df["extension"] = False
    from .analysis.table import normalise
    return normalise(df)[list(ANALYSIS_COLUMNS)]


def read_scales(path: Path) -> pd.DataFrame:
    """The attention-scale table (:meth:`tl_leadterm.visual.AttentionComparison.scale_table`)."""
    df = read_csv(path, numeric=("layer", "head", "scale", "fit_residual", "pattern_tv", "uniform_tv"), text=("model", "aligned"),
                  optional=("pattern_tv", "uniform_tv", "aligned"), integer=("layer", "head"), what="attention-scale table")
    if "aligned" in df:
        bad = ~df["aligned"].isin(("aligned", "anti-aligned", "none", ""))
        require(not bad.any(), f"{path}: column 'aligned' must hold aligned, anti-aligned or none; {_REBUILD}")
    for c in ("layer", "head"):
        require(df[c].notna().all(), f"{path}: column {c!r} has an empty cell; {_REBUILD}")
    return df


def read_associations(path: Path) -> pd.DataFrame:
    """The explorer's long table (:func:`tl_leadterm.visual.associations`): one row per token, source and rank."""
    df = read_csv(path, numeric=("rank", "value"), text=("token", "source", "associate", "description"),
                  optional=("description",), integer=("rank",), what="associations table")
    require(df["rank"].notna().all() and (df["rank"] >= 1).all(), f"{path}: column 'rank' must hold whole numbers >= 1; {_REBUILD}")
    df["rank"] = df["rank"].astype(int)
    dup = df.duplicated(["token", "source", "rank"])
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        raise _bad(path, f"line {i + 2} repeats token {df['token'].iloc[i][:40]!r}, source {df['source'].iloc[i][:40]!r}, "
                         f"rank {df['rank'].iloc[i]}")
    return df


def read_json(path: Path, kind: type, what: str):
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        raise LeadTermError(f"{path} is not valid JSON; {_REBUILD}") from None
    require(isinstance(obj, kind), f"{path} must hold a JSON {what}; {_REBUILD}")
    return obj


def _scalar_or_list(v, depth: int = 0) -> bool:
    if v is None or isinstance(v, (bool, int, str)):
        return not isinstance(v, str) or len(v) <= MAX_TEXT
    if isinstance(v, float):
        return True
    if depth < 3 and isinstance(v, list):
        return len(v) <= 1000 and all(_scalar_or_list(x, depth + 1) for x in v)
    if depth < 3 and isinstance(v, dict):
        return len(v) <= 1000 and all(isinstance(k, str) and len(k) <= 200 and _scalar_or_list(x, depth + 1)
                                      for k, x in v.items())
    return False


def read_summary(path: Path) -> dict:
    """``summary.json``: an object of at most :data:`MAX_SUMMARY` settings, named by short text without control
    characters, each a number, text, true/false/null, or a small list/object of those; ``text`` must be text."""
    facts = read_json(path, dict, "object of settings")
    require(len(facts) <= MAX_SUMMARY, f"{path} holds more than {MAX_SUMMARY} settings; {_REBUILD}")
    for k, v in facts.items():
        require(len(k) <= 200 and not _CONTROL.search(k), f"{path}: setting name {k[:40]!r} is not a short plain text; {_REBUILD}")
        require(_scalar_or_list(v), f"{path}: setting {k[:40]!r} must be a number, text, true/false/null or a small "
                                    f"list or object of those; {_REBUILD}")
    require(not isinstance(facts.get("text"), (list, dict)) and (facts.get("text") is None or isinstance(facts["text"], str)),
            f"{path}: 'text' must be text; {_REBUILD}")
    return facts


def read_views(path: Path) -> list[tuple[str, CVView]]:
    """``views.json``: a list of saved views (:meth:`CVView.to_json` plus ``section``), each validated
    (:func:`tl_leadterm.visual.views.check_view_json`)."""
    items = read_json(path, list, "list of views")
    require(len(items) <= 10_000, f"{path} holds more than 10000 views; {_REBUILD}")
    out = []
    for i, d in enumerate(items):
        require(isinstance(d, dict) and isinstance(d.get("section", "Views"), str),
                f"{path}: view {i} must be an object with a text 'section'; {_REBUILD}")
        try:
            v = CVView.from_json(d)
        except LeadTermError as e:
            raise LeadTermError(f"{path}: view {i}: {e.template}") from None
        out.append((d.get("section", "Views") or "Views", v))
    return out


def read_monitor(path: Path) -> list[dict]:
    """Monitor records (:mod:`tl_leadterm.monitor`): one JSON object per line, a torn last line (no newline at its end)
    skipped; each with a whole ``step`` >= 0 and groups that map names (:data:`NAME`) to numbers or null.
    Only ``step`` and the groups are kept."""
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(path, "is not UTF-8 text, so not a tl_leadterm monitor log") from None
    except OSError as e:
        raise LeadTermError(f"cannot read {path} ({e.strerror}); check its permissions") from None
    lines = raw.split("\n")
    torn = lines[-1] if lines[-1].strip() else None
    recs = []
    for i, line in enumerate(lines[:-1]):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except (ValueError, RecursionError):
            raise _bad(path, f"line {i + 1} is not a JSON record") from None
        recs.append((i + 1, r))
    if torn is not None:
        try:
            recs.append((len(lines), json.loads(torn)))
        except (ValueError, RecursionError):
            pass  # the last record of a killed run
    out = []
    for n, r in recs:
        require(isinstance(r, dict) and isinstance(r.get("step"), int) and not isinstance(r.get("step"), bool)
                and 0 <= r["step"] < 2**63, f"{path}: record in line {n} has no integer 'step' >= 0; "
                                            "it is not a tl_leadterm monitor log")
        rec = {"step": r["step"]}
        for group in MONITOR_GROUPS:
            vals = r.get(group) or {}
            require(isinstance(vals, dict) and len(vals) <= 100_000
                    and all(isinstance(k, str) and NAME.match(k) for k in vals)
                    and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
                            for v in vals.values()),
                    f"{path}: line {n}, {group!r} must map names (letters, digits, '_', '.' and '/') to numbers or null")
            rec[group] = dict(current_keys(vals))   # logs of earlier releases: current keys
        out.append(rec)
    return out

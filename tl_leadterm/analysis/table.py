"""The tidy result table every analysis returns, and how it is written to files.

Columns (always, in this order): ``checkpoint, lens, reference, layer, head, site, measure, value,
target, null_mean, null_q05, null_q95, percentile, rank, row_token, col_token, detail, extension``.

* ``lens``: ``weights`` | ``update`` | ``gradient`` (:mod:`.lenses`); ``reference``: the reference
  checkpoint's label on ``update`` rows, empty otherwise;
* ``layer``/``head``: nullable integers, empty for rows that are not per layer / per head (``head``
  empty = the whole layer, e.g. averaged over heads);
* ``site`` names what was measured (:data:`tl_leadterm.theory.SITES`), ``target`` the basis tensor it is
  compared with (THEORY.md names; ``model:T`` read through the model's geometry, ``T.T`` transposed);
* ``null_mean, null_q05, null_q95, percentile``: the measure's place in its null distribution
  (:mod:`.chance`), on the rows that have one (``signed_cosine``), empty elsewhere;
* ``rank, row_token, col_token``: residual pairs and singular directions as columns (``rank`` 1 = largest;
  for a direction, the top row and column token), beside the readable ``detail``;
* ``extension`` is True for measures that go beyond the paper.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from ..io import write_json_atomic, write_text_atomic
from ..theory import measure_key

COLUMNS = ["checkpoint", "lens", "reference", "layer", "head", "site", "measure", "value", "target",
           "null_mean", "null_q05", "null_q95", "percentile", "rank", "row_token", "col_token", "detail", "extension"]
NULL_COLUMNS = ("null_mean", "null_q05", "null_q95", "percentile")
INT_COLUMNS = ("layer", "head", "rank")
TEXT_COLUMNS = ("checkpoint", "lens", "reference", "site", "measure", "target", "row_token", "col_token", "detail")
NAN = float("nan")


def row(checkpoint, layer, head, site, measure, value, target="", detail="", extension=False, **extra) -> dict:
    """One table row; ``extra`` sets ``lens``, ``reference``, the null columns, ``rank``, ``row_token``, ``col_token``."""
    r = {"checkpoint": checkpoint, "lens": "weights", "reference": "", "layer": layer, "head": head, "site": site,
         "measure": measure, "value": float(value), "target": target, "detail": detail, "extension": bool(extension)}
    r.update(extra)
    return r


def row_key(r, measure: bool = False) -> str:
    """The key of a table row (a mapping or namedtuple with ``site``, ``layer``, ``head``, ``measure``): the one key
    scheme of the monitor, the quick measures and the causal check (:func:`tl_leadterm.theory.measure_key`)."""
    get = r.get if hasattr(r, "get") else (lambda c: getattr(r, c))
    layer, head = get("layer"), get("head")
    return measure_key(str(get("site")), None if pd.isna(layer) else int(layer), None if pd.isna(head) else int(head),
                       str(get("measure")) if measure else "")


def frame(rows: list[dict]) -> pd.DataFrame:
    """The table of ``rows`` with every column of :data:`COLUMNS` in its type (empty where a row does not set it)."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    return normalise(df)


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Columns of :data:`COLUMNS` in order and type: integers nullable (``Int64``), text as str, numbers float."""
    df = df.copy()
    for c in COLUMNS:
        if c not in df:
            df[c] = "weights" if c == "lens" else ("" if c in TEXT_COLUMNS else (False if c == "extension" else None))
    for c in INT_COLUMNS:
        v = pd.to_numeric(df[c], errors="coerce")
        df[c] = v.round().astype("Int64")
    for c in ("value", *NULL_COLUMNS):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in TEXT_COLUMNS:
        col = df[c].astype(object)
        df[c] = col.where(col.notna(), "").astype(str)
    df["lens"] = df["lens"].replace("", "weights")
    df["extension"] = df["extension"].fillna(False).astype(bool)
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


def write_table(df: pd.DataFrame, out: str | os.PathLike, stem: str) -> list[Path]:
    """Write ``df`` as ``out/stem.csv`` and ``out/stem.json`` (records, NaN as null), atomically."""
    out = Path(out)
    write_text_atomic(out / f"{stem}.csv", df.to_csv(index=False))
    records = []
    for rec in df.to_dict(orient="records"):
        records.append({k: (None if v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v) for k, v in rec.items()})
    write_json_atomic(out / f"{stem}.json", records)
    return [out / f"{stem}.csv", out / f"{stem}.json"]


def write_results(df: pd.DataFrame, out: str | os.PathLike, stem: str = "analysis", *,
                  retention_threshold: float | None = None) -> list[Path]:
    """The analysis table (:func:`write_table`); when it holds per-head fits, the heads ranked by signed cosine and
    percentile per checkpoint, lens and site as ``out/head_ranking.csv``; with two checkpoints or more, the
    per-layer retention as ``out/retention.csv`` (:func:`~tl_leadterm.analysis.findings.retention`).
    Files of another ``stem`` than ``analysis`` are prefixed (``neox_head_ranking.csv``)."""
    from .findings import RETENTION_THRESHOLD, retention
    from .heads import rank_heads

    df = normalise(df)
    files = write_table(df, out, stem)
    prefix = "" if stem == "analysis" else stem.split("_")[0] + "_"
    ranking = rank_heads(df)
    if len(ranking):
        write_text_atomic(Path(out) / f"{prefix}head_ranking.csv", ranking.to_csv(index=False))
        files.append(Path(out) / f"{prefix}head_ranking.csv")
    ret = retention(df, RETENTION_THRESHOLD if retention_threshold is None else retention_threshold)
    if len(ret):
        write_text_atomic(Path(out) / f"{prefix}retention.csv", ret.to_csv(index=False))
        files.append(Path(out) / f"{prefix}retention.csv")
    return files

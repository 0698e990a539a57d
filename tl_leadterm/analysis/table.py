"""The tidy result table every analysis returns, and how it is written to files.

Columns (always, in this order): ``checkpoint, layer, head, site, measure, value,
target, detail, extension``.  ``layer``/``head`` are NaN for rows that are not
per layer / per head (``head`` NaN = the whole layer, e.g. averaged over heads);
``site`` names what was measured, ``target`` the basis tensor it is compared
with (THEORY.md names); ``detail`` is text (decoded tokens); ``extension`` is True
for measures that go beyond the paper.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from ..io import write_json_atomic, write_text_atomic

COLUMNS = ["checkpoint", "layer", "head", "site", "measure", "value", "target", "detail", "extension"]
NAN = float("nan")


def row(checkpoint, layer, head, site, measure, value, target="", detail="", extension=False) -> dict:
    return {"checkpoint": checkpoint, "layer": NAN if layer is None else layer, "head": NAN if head is None else head,
            "site": site, "measure": measure, "value": float(value), "target": target, "detail": detail,
            "extension": bool(extension)}


def frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["layer"] = df["layer"].astype("float64")
    df["head"] = df["head"].astype("float64")
    df["value"] = df["value"].astype("float64")
    return df


def write_table(df: pd.DataFrame, out: str | os.PathLike, stem: str) -> list[Path]:
    """Write ``df`` as ``out/stem.csv`` and ``out/stem.json`` (records, NaN as null), atomically."""
    out = Path(out)
    write_text_atomic(out / f"{stem}.csv", df.to_csv(index=False))
    records = []
    for rec in df.to_dict(orient="records"):
        records.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()})
    write_json_atomic(out / f"{stem}.json", records)
    return [out / f"{stem}.csv", out / f"{stem}.json"]


def write_results(df: pd.DataFrame, out: str | os.PathLike, stem: str = "analysis") -> list[Path]:
    """The analysis table (:func:`write_table`) and, when it holds per-head projections, the heads ranked by
    the explained fraction per site and checkpoint as ``out/head_ranking.csv``."""
    from .heads import rank_heads

    files = write_table(df, out, stem)
    ranking = rank_heads(df)
    if len(ranking):
        write_text_atomic(Path(out) / "head_ranking.csv", ranking.to_csv(index=False))
        files.append(Path(out) / "head_ranking.csv")
    return files

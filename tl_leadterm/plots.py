"""Plots (matplotlib, Agg backend) of analysis tables and monitor logs.

Inputs are the tidy analysis table of :mod:`tl_leadterm.analysis.table` (columns
``checkpoint, layer, head, site, measure, value, ...``) or the records of a
training monitor (:mod:`tl_leadterm.monitor`).  Every function saves one figure
to ``path`` (format from the suffix: ``.png`` or ``.svg``) atomically and returns
the path.  Figures carry a title, axis labels and a legend or colour bar.

* :func:`similarity_vs_step` — the paper's figure: similarity to the leading term
  against the training step, one line per weight and layer.
* :func:`checkpoint_heatmap` — layer x checkpoint or head x checkpoint heatmap of one measure.
* :func:`explained_bars` — explained fraction ‖proj‖²/‖W‖² per weight.
* :func:`head_grid` — layer x head heatmap of one measure (e.g. the explained fraction) at one checkpoint.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "tl_leadterm"   # same figure, same SVG bytes (ids are otherwise random)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .errors import require  # noqa: E402
from .theory import LEADING  # noqa: E402
from .io import atomic_path  # noqa: E402

FORMATS = (".png", ".svg")


def _save(fig, path) -> Path:
    p = Path(path)
    require(p.suffix.lower() in FORMATS, f"plot path {p} must end in .png or .svg")
    fig.tight_layout()
    with atomic_path(p) as tmp:
        fmt = p.suffix[1:].lower()
        fig.savefig(tmp, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else {"Software": None})
    plt.close(fig)
    return p


def checkpoint_step(name) -> float:
    """The training step encoded in a checkpoint label (``step512`` → 512; ``init`` → 0); NaN if none."""
    s = str(name)
    if s in ("init", "random"):
        return 0.0
    m = re.findall(r"(\d+)", s)
    return float(m[-1]) if m else math.nan


def order_checkpoints(names: Sequence) -> list:
    """Checkpoint labels by step when every label has one, else in order of appearance."""
    uniq = list(dict.fromkeys(names))
    steps = [checkpoint_step(n) for n in uniq]
    if all(not math.isnan(s) for s in steps):
        return [n for _, n in sorted(zip(steps, uniq), key=lambda x: x[0])]
    return uniq


def series_from_monitor(records: list[dict], group: str = "similarity") -> pd.DataFrame:
    """Monitor records → long frame ``step, series, value`` (one series per weight/layer name)."""
    rows = []
    for r in records:
        for name, v in (r.get(group) or {}).items():
            if v is not None:
                rows.append({"step": r["step"], "series": name, "value": float(v)})
    return pd.DataFrame(rows, columns=["step", "series", "value"])


def series_from_analysis(df: pd.DataFrame, measure: str = "cosine_leading", head_average: bool = True) -> pd.DataFrame:
    """Analysis table over checkpoints → long frame ``step, series, value`` (series = ``site`` or ``site.layer``)."""
    sub = df[df["measure"] == measure]
    if head_average and "head" in sub:
        sub = sub[sub["head"].isna()]
    rows = []
    for _, r in sub.iterrows():
        layer = r["layer"]
        name = str(r["site"]) if pd.isna(layer) else f"{r['site']}.{int(layer)}"
        rows.append({"step": checkpoint_step(r["checkpoint"]), "series": name, "value": float(r["value"])})
    return pd.DataFrame(rows, columns=["step", "series", "value"])


def similarity_vs_step(series: pd.DataFrame, path, *, title: str = "Similarity to the leading term during training",
                       ylabel: str = "cosine similarity to leading term", logx: bool | None = None) -> Path:
    """Lines of ``value`` against ``step``, one per ``series`` (columns ``step, series, value``)."""
    require(len(series) > 0, "nothing to plot: the table has no similarity rows")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    names = sorted(series["series"].unique(), key=_series_key)
    styles = ["-", "--", ":", "-."]
    for i, name in enumerate(names):
        s = series[series["series"] == name].sort_values("step")
        ax.plot(s["step"], s["value"], styles[(i // 10) % 4], marker="o", ms=3, label=name)
    steps = series["step"].dropna()
    if logx is None:
        logx = len(steps) > 0 and steps.min() > 0 and steps.max() / max(steps.min(), 1) > 30
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel("training step" + (" (log scale)" if logx else ""))
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(title, 70), fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(title="weight.layer", fontsize=8, ncol=2 if len(names) > 6 else 1, loc="best")
    return _save(fig, path)


def _series_key(name: str):
    base, _, layer = name.partition(".")
    order = {w: i for i, w in enumerate(LEADING)}  # W_O, V, W, P
    return (order.get(base, 9), base, int(layer) if layer.isdigit() else -1, name)


def checkpoint_heatmap(df: pd.DataFrame, path, *, measure: str, site: str, rows: str = "layer", layer: int | None = None,
                       title: str | None = None, cmap: str = "viridis") -> Path:
    """Heatmap of ``measure`` at ``site``: rows = layers (head averages), heads of ``layer``, or every head
    (``rows="layer_head"``, labelled ``L{l}H{h}``); columns = checkpoints."""
    require(rows in ("layer", "head", "layer_head"), f"rows must be 'layer', 'head' or 'layer_head', got {rows!r}")
    sub = df[(df["measure"] == measure) & (df["site"] == site)]
    if rows == "layer":
        sub = sub[sub["head"].isna()] if "head" in sub else sub
        sub = sub[sub["layer"].notna()]
    elif rows == "head":
        require(layer is not None, "a head x checkpoint heatmap needs layer=")
        sub = sub[(sub["layer"] == layer) & sub["head"].notna()]
    else:
        sub = sub[sub["layer"].notna() & sub["head"].notna()]
        sub = sub.assign(layer_head=sub["layer"] * 10_000 + sub["head"])  # sorts by layer, then head
    require(len(sub) > 0, f"no rows with measure={measure!r} at site={site!r} to plot")
    ckpts = order_checkpoints(sub["checkpoint"].astype(str).tolist())
    piv = sub.assign(checkpoint=sub["checkpoint"].astype(str)).pivot_table(index=rows, columns="checkpoint", values="value", aggfunc="mean")
    piv = piv.reindex(columns=ckpts).sort_index()
    labels = ([f"L{int(i) // 10_000}H{int(i) % 10_000}" for i in piv.index] if rows == "layer_head"
              else [str(int(i)) for i in piv.index])
    fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * len(ckpts) + 2.5), max(2.4, 0.45 * len(piv) + 1.6)))
    im = ax.imshow(piv.values, aspect="auto", cmap=cmap)
    ax.set_xticks(range(len(ckpts)), [str(c) for c in ckpts], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(piv.index)), labels, fontsize=8 if len(labels) > 16 else None)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel({"layer": "layer", "layer_head": "layer, head"}.get(rows) or f"head (layer {int(layer)})")
    if len(piv.index) * len(ckpts) <= 120:
        for (i, j), v in pd.DataFrame(piv.values).stack().dropna().items():
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < piv.values[~pd.isna(piv.values)].mean() else "black")
        for i, j in zip(*np.nonzero(pd.isna(piv.values))):
            ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="gray")
    fig.colorbar(im, ax=ax, label=measure)
    ax.set_title(textwrap.fill(title or f"{measure} at {site}: {rows} × checkpoint", 48), fontsize=10)
    return _save(fig, path)


def head_grid(df: pd.DataFrame, path, *, measure: str = "explained", site: str, checkpoint: str | None = None,
              title: str | None = None, cmap: str = "viridis") -> Path:
    """Layer × head heatmap of ``measure`` at ``site`` at one checkpoint (default: the last)."""
    sub = df[(df["measure"] == measure) & (df["site"] == site) & df["layer"].notna() & df["head"].notna()]
    require(len(sub) > 0, f"no per-head rows with measure={measure!r} at site={site!r} to plot")
    ckpts = order_checkpoints(sub["checkpoint"].astype(str).tolist())
    checkpoint = ckpts[-1] if checkpoint is None else str(checkpoint)
    sub = sub[sub["checkpoint"].astype(str) == checkpoint]
    piv = sub.pivot_table(index="layer", columns="head", values="value", aggfunc="mean").sort_index()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * piv.shape[1] + 2.5), max(2.4, 0.5 * piv.shape[0] + 1.6)))
    im = ax.imshow(piv.values, aspect="auto", cmap=cmap, vmin=0, vmax=1 if measure == "explained" else None)
    ax.set_xticks(range(piv.shape[1]), [str(int(h)) for h in piv.columns])
    ax.set_yticks(range(piv.shape[0]), [str(int(l)) for l in piv.index])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if piv.size <= 200:
        for (i, j), v in pd.DataFrame(piv.values).stack().dropna().items():
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.5 else "black")
    fig.colorbar(im, ax=ax, label=measure)
    ax.set_title(textwrap.fill(title or f"{measure} at {site} per head ({checkpoint})", 48), fontsize=10)
    return _save(fig, path)


def explained_bars(df: pd.DataFrame, path, *, checkpoint: str | None = None, measure: str = "explained",
                   title: str | None = None) -> Path:
    """Bars of ``measure`` (default explained fraction ‖proj‖²/‖W‖²) per weight (``site.layer``) at one checkpoint (default: last)."""
    sub = df[df["measure"] == measure]
    if "head" in sub:
        sub = sub[sub["head"].isna()]
    require(len(sub) > 0, f"no {measure!r} rows to plot")
    ckpts = order_checkpoints(sub["checkpoint"].astype(str).tolist())
    checkpoint = ckpts[-1] if checkpoint is None else str(checkpoint)
    sub = sub[sub["checkpoint"].astype(str) == checkpoint]
    require(len(sub) > 0, f"no {measure!r} rows at checkpoint {checkpoint!r}")
    names = [str(s) if pd.isna(l) else f"{s}.{int(l)}" for s, l in zip(sub["site"], sub["layer"])]
    order = sorted(range(len(names)), key=lambda i: _series_key(names[i]))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * len(names) + 2), 3.8))
    vals = [float(sub["value"].iloc[i]) for i in order]
    bars = ax.bar([names[i] for i in order], vals, color="tab:blue", label=measure)
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(1.05, max(vals) * 1.1 if vals else 1))
    ax.set_xlabel("weight.layer")
    ax.set_ylabel("explained fraction ‖proj‖²/‖W‖²" if measure == "explained" else measure)
    ax.set_title(textwrap.fill(title or f"Explained by the leading term ({checkpoint or 'final'})", 60), fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    return _save(fig, path)


def save_both(fn, data, stem: str | os.PathLike, **kwargs) -> list[Path]:
    """``fn(data, path, **kwargs)`` twice: ``stem.png`` and ``stem.svg``."""
    return [fn(data, Path(f"{stem}{ext}"), **kwargs) for ext in FORMATS]

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

Labels are shown as written: a ``$`` in a checkpoint, series or title is a dollar sign, never matplotlib
mathtext (:func:`plain`).  Non-finite values (NaN, ±inf) are left out of lines, shown as ``n/a``/``inf`` in
heatmaps and bars, and never set an axis or colour limit.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
import warnings
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "tl_leadterm"   # same figure, same SVG bytes (ids are otherwise random)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .errors import LeadTermError, require  # noqa: E402
from .theory import LEADING, measure_key, parse_key  # noqa: E402
from .io import atomic_path  # noqa: E402

FORMATS = (".png", ".svg")


def plain(text, limit: int | None = None) -> str:
    """``text`` for a matplotlib label, shown as written: every ``$`` escaped, so no mathtext is parsed;
    cut to ``limit`` characters (ending in …) when given."""
    text = str(text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _title(text, width: int, lines: int = 4) -> str:
    """``text`` wrapped to ``width`` columns (as ``textwrap.fill``), at most ``lines`` lines, shown as written (:func:`plain`)."""
    rows = textwrap.wrap(str(text), width) or [""]
    if len(rows) > lines:
        rows = rows[:lines]
        rows[-1] = rows[-1][: width - 1] + "…"
    return plain("\n".join(rows))


#: the largest magnitude drawn on an axis or a colour scale: matplotlib cannot lay out ticks over ranges near the
#: float limit (±1e308), so larger values are left out like non-finite ones (their labels still say what they are)
PLOT_MAX = 1e100


def _plottable(values) -> np.ndarray:
    """``values`` as floats with everything that cannot set a limit (non-finite, |v| > :data:`PLOT_MAX`) as NaN."""
    a = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(a) & (np.abs(a) <= PLOT_MAX), a, np.nan)


def _finite(values) -> np.ndarray:
    """The values that may set an axis or colour limit (finite and within :data:`PLOT_MAX`), flattened."""
    a = _plottable(values).ravel()
    return a[np.isfinite(a)]


def _save(fig, path) -> Path:
    p = Path(path)
    try:
        require(p.suffix.lower() in FORMATS, f"plot path {p} must end in .png or .svg")
        with warnings.catch_warnings():   # long labels: a cramped figure is still a figure
            warnings.filterwarnings("ignore", message="Tight layout not applied")
            fig.tight_layout()
        with atomic_path(p) as tmp:
            fmt = p.suffix[1:].lower()
            fig.savefig(tmp, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else {"Software": None})
    finally:
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
    """Analysis table over checkpoints → long frame ``step, series, value`` (series: the key ``site`` or
    ``site/L<layer>``, :func:`tl_leadterm.theory.measure_key`)."""
    sub = df[df["measure"] == measure]
    if head_average and "head" in sub:
        sub = sub[sub["head"].isna()]
    rows = []
    for _, r in sub.iterrows():
        layer = r["layer"]
        name = measure_key(str(r["site"]), None if pd.isna(layer) else int(layer))
        rows.append({"step": checkpoint_step(r["checkpoint"]), "series": name, "value": float(r["value"])})
    return pd.DataFrame(rows, columns=["step", "series", "value"])


def similarity_vs_step(series: pd.DataFrame, path, *, title: str = "Similarity to the leading term during training",
                       ylabel: str = "cosine similarity to leading term", logx: bool | None = None) -> Path:
    """Lines of ``value`` against ``step``, one per ``series`` (columns ``step, series, value``)."""
    require(len(series) > 0, "nothing to plot: the table has no similarity rows")
    ok = np.isfinite(_plottable(pd.to_numeric(series["step"], errors="coerce").astype(float))) & np.isfinite(
        _plottable(pd.to_numeric(series["value"], errors="coerce").astype(float)))
    series = series[ok]   # NaN/inf (and beyond PLOT_MAX) points are left out (a line has a gap there)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    names = sorted(series["series"].astype(str).unique(), key=_series_key)
    styles = ["-", "--", ":", "-."]
    for i, name in enumerate(names):
        s = series[series["series"].astype(str) == name].sort_values("step")
        ax.plot(s["step"], s["value"], styles[(i // 10) % 4], marker="o", ms=3, label=plain(name, 40))
    if not names:
        ax.text(0.5, 0.5, "no finite values to plot", ha="center", va="center", transform=ax.transAxes, color="gray")
    steps = series["step"].dropna()
    if logx is None:
        logx = len(steps) > 0 and steps.min() > 0 and steps.max() / max(steps.min(), 1) > 30
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel("training step" + (" (log scale)" if logx else ""))
    ax.set_ylabel(plain(ylabel))
    ax.set_title(_title(title, 70), fontsize=11)
    ax.grid(alpha=0.3)
    if names:
        ax.legend(title="site/layer", fontsize=8, ncol=2 if len(names) > 6 else 1, loc="best")
    return _save(fig, path)


def _series_key(name: str):
    order = {w: i for i, w in enumerate(LEADING)}  # W_O, V, W, P
    try:
        k = parse_key(name)
    except LeadTermError:
        return (9, name, -1, -1, name)
    return (order.get(k.site, 9), k.site, -1 if k.layer is None else k.layer, -1 if k.head is None else k.head, name)


#: fixed colour limits of the bounded measures: one scale for every checkpoint, layer and head of a measure
FIXED_LIMITS = {"cov_cosine": (-1.0, 1.0), "cka": (0.0, 1.0), "cosine": (-1.0, 1.0), "cosine_leading": (-1.0, 1.0),
                "signed_cosine": (-1.0, 1.0), "explained": (0.0, 1.0)}


def checkpoint_heatmap(df: pd.DataFrame, path, *, measure: str, site: str, rows: str = "layer", layer: int | None = None,
                       title: str | None = None, cmap: str | None = None) -> Path:
    """Heatmap of ``measure`` at ``site``: rows = layers (head averages), heads of ``layer``, or every head
    (``rows="layer_head"``, labelled ``L{l}H{h}``); columns = checkpoints.

    Bounded measures use one fixed scale (:data:`FIXED_LIMITS`; diverging around 0 where the measure is signed),
    so that 0.035 against 0.038 never looks like the full range; where the table has chance levels
    (``percentile``), cells at chance (between 0.05 and 0.95) are greyed out."""
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
    with np.errstate(invalid="ignore"):   # a cell of +inf and -inf averages to NaN (shown n/a)
        piv = sub.assign(checkpoint=sub["checkpoint"].astype(str)).pivot_table(index=rows, columns="checkpoint", values="value", aggfunc="mean", dropna=False)
    piv = piv.reindex(columns=ckpts).sort_index()
    labels = ([f"L{int(i) // 10_000}H{int(i) % 10_000}" for i in piv.index] if rows == "layer_head"
              else [str(int(i)) for i in piv.index])
    fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * len(ckpts) + 2.5), max(2.4, 0.45 * len(piv) + 1.6)))
    lo, hi = FIXED_LIMITS.get(measure, (None, None))
    cmap = cmap or ("RdBu_r" if lo is not None and lo < 0 else "viridis")
    im = _imshow(ax, piv.values.astype(float), cmap, lo, hi)
    if "percentile" in sub and sub["percentile"].notna().any():
        with np.errstate(invalid="ignore"):
            pct = sub.assign(checkpoint=sub["checkpoint"].astype(str)).pivot_table(
                index=rows, columns="checkpoint", values="percentile", aggfunc="mean", dropna=False)
        pct = pct.reindex(index=piv.index, columns=ckpts).values.astype(float)
        chance = (pct > 0.05) & (pct < 0.95)
        ax.imshow(np.ma.masked_where(~chance, np.ones_like(pct)), aspect="auto", cmap="Greys", vmin=0, vmax=4, alpha=0.9)
    ax.set_xticks(range(len(ckpts)), [plain(c, 32) for c in ckpts], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(piv.index)), labels, fontsize=8 if len(labels) > 16 else None)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel({"layer": "layer", "layer_head": "layer, head"}.get(rows) or f"head (layer {int(layer)})")
    if len(piv.index) * len(ckpts) <= 120:
        _annotate(ax, piv.values.astype(float), threshold=-math.inf if cmap == "RdBu_r" else None)
    fig.colorbar(im, ax=ax, label=plain(measure))
    ax.set_title(_title(title or f"{measure} at {site}: {rows} × checkpoint", 48), fontsize=10)
    return _save(fig, path)


def _imshow(ax, values: np.ndarray, cmap, vmin=None, vmax=None):
    """``imshow`` of ``values`` with non-finite cells blank and colour limits from the finite ones only."""
    fin = _finite(values)
    lo = vmin if vmin is not None else (float(fin.min()) if fin.size else 0.0)
    hi = vmax if vmax is not None else (float(fin.max()) if fin.size else 1.0)
    return ax.imshow(np.ma.masked_invalid(_plottable(values)), aspect="auto", cmap=cmap, vmin=lo, vmax=hi)


def _annotate(ax, values: np.ndarray, threshold: float | None = None) -> None:
    """Each cell's value (``n/a`` for NaN, ``inf``/``-inf`` for infinities) written on a heatmap."""
    fin = _finite(values)
    mid = threshold if threshold is not None else (float(fin.mean()) if fin.size else 0.0)
    for i, j in zip(*np.nonzero(np.ones_like(values, dtype=bool))):
        v = float(values[i, j])
        if math.isnan(v):
            ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="gray")
        elif math.isinf(v):
            ax.text(j, i, "inf" if v > 0 else "-inf", ha="center", va="center", fontsize=7, color="gray")
        else:
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < mid else "black")


def head_grid(df: pd.DataFrame, path, *, measure: str = "explained", site: str, checkpoint: str | None = None,
              title: str | None = None, cmap: str = "viridis") -> Path:
    """Layer × head heatmap of ``measure`` at ``site`` at one checkpoint (default: the last)."""
    sub = df[(df["measure"] == measure) & (df["site"] == site) & df["layer"].notna() & df["head"].notna()]
    require(len(sub) > 0, f"no per-head rows with measure={measure!r} at site={site!r} to plot")
    ckpts = order_checkpoints(sub["checkpoint"].astype(str).tolist())
    checkpoint = ckpts[-1] if checkpoint is None else str(checkpoint)
    sub = sub[sub["checkpoint"].astype(str) == checkpoint]
    with np.errstate(invalid="ignore"):
        piv = sub.pivot_table(index="layer", columns="head", values="value", aggfunc="mean", dropna=False).sort_index()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * piv.shape[1] + 2.5), max(2.4, 0.5 * piv.shape[0] + 1.6)))
    im = _imshow(ax, piv.values.astype(float), cmap, 0, 1 if measure == "explained" else None)
    ax.set_xticks(range(piv.shape[1]), [str(int(h)) for h in piv.columns])
    ax.set_yticks(range(piv.shape[0]), [str(int(l)) for l in piv.index])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if piv.size <= 200:
        _annotate(ax, piv.values.astype(float), threshold=0.5)
    fig.colorbar(im, ax=ax, label=plain(measure))
    ax.set_title(_title(title or f"{measure} at {site} per head ({checkpoint})", 48), fontsize=10)
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
    shown = [v if math.isfinite(v) and abs(v) <= PLOT_MAX else 0.0 for v in vals]  # else no bar; the label says what it is
    bars = ax.bar([plain(names[i]) for i in order], shown, color="tab:blue", label=plain(measure))
    for b, v, h in zip(bars, vals, shown):
        ax.text(b.get_x() + b.get_width() / 2, h, "n/a" if math.isnan(v) else f"{v:.2f}" if abs(v) <= PLOT_MAX
                else f"{v:.3g}" if math.isfinite(v) else ("inf" if v > 0 else "-inf"), ha="center", va="bottom", fontsize=8)
    fin = _finite(vals)
    ax.set_ylim(min(0.0, float(fin.min()) * 1.1 if fin.size else 0.0), max(1.05, float(fin.max()) * 1.1 if fin.size else 1.0))
    ax.set_xlabel("weight.layer")
    ax.set_ylabel("explained fraction ‖proj‖²/‖W‖²" if measure == "explained" else plain(measure))
    ax.set_title(_title(title or f"Explained by the leading term ({checkpoint or 'final'})", 60), fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    return _save(fig, path)


def save_both(fn, data, stem: str | os.PathLike, **kwargs) -> list[Path]:
    """``fn(data, path, **kwargs)`` twice: ``stem.png`` and ``stem.svg``."""
    return [fn(data, Path(f"{stem}{ext}"), **kwargs) for ext in FORMATS]


# ---------------------------------------------------------------------------
# signed measures with their chance level
# ---------------------------------------------------------------------------
def signed_heatmap(df: pd.DataFrame, path, *, site: str, lens: str = "weights", target: str | None = None,
                   title: str | None = None, limit: float | None = None) -> Path:
    """Head × checkpoint heatmap of the signed cosine at ``site`` under ``lens`` (target: the site's own).

    The colour scale is diverging around 0 and symmetric, fixed for the whole measure (``limit``: default the
    largest |value| of the measure over every head and checkpoint shown); cells whose percentile lies between
    0.05 and 0.95 (at chance) are greyed out, so only what random heads do not reach carries colour.
    """
    from .theory import SITES

    target = target or SITES[site].target
    sub = df[(df["measure"] == "signed_cosine") & (df["site"] == site) & (df["lens"] == lens) & (df["target"] == target)
             & df["layer"].notna() & df["head"].notna()]
    require(len(sub) > 0, f"no signed_cosine rows at site={site!r}, lens={lens!r} to plot")
    sub = sub.assign(row=sub["layer"].astype(int) * 10_000 + sub["head"].astype(int), checkpoint=sub["checkpoint"].astype(str))
    ckpts = order_checkpoints(sub["checkpoint"].tolist())
    piv = sub.pivot_table(index="row", columns="checkpoint", values="value", aggfunc="mean").reindex(columns=ckpts).sort_index()
    pct = sub.pivot_table(index="row", columns="checkpoint", values="percentile", aggfunc="mean").reindex(
        index=piv.index, columns=ckpts)
    vals = piv.values.astype(float)
    fin = _finite(vals)
    lim = limit if limit is not None else (float(np.abs(fin).max()) if fin.size else 1.0)
    lim = lim if lim > 0 else 1.0
    chance = ((pct.values > 0.05) & (pct.values < 0.95)) if pct.size else np.zeros_like(vals, dtype=bool)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * len(ckpts) + 2.5), max(2.4, 0.3 * len(piv) + 1.6)))
    shown = np.where(chance, np.nan, _plottable(vals))
    im = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    grey = np.ma.masked_where(~chance, np.ones_like(vals))
    ax.imshow(grey, aspect="auto", cmap="Greys", vmin=0, vmax=4, alpha=0.9)
    ax.set_xticks(range(len(ckpts)), [plain(c, 32) for c in ckpts], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(piv.index)), [f"L{int(i) // 10_000}H{int(i) % 10_000}" for i in piv.index],
                  fontsize=8 if len(piv) > 16 else None)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("layer, head")
    if vals.size <= 160:
        for i, j in zip(*np.nonzero(np.ones_like(vals, dtype=bool))):
            v = vals[i, j]
            ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="gray" if chance[i, j] or not np.isfinite(v) else "black")
    fig.colorbar(im, ax=ax, label=plain(f"signed cosine with {target} (grey: at chance)"))
    ax.set_title(plain(textwrap.fill(title or f"{site}, {lens}: signed cosine, head × checkpoint", 48)), fontsize=10)
    return _save(fig, path)


def retention_plot(df: pd.DataFrame, path, *, site: str, lens: str = "weights", threshold: float = 0.7,
                   title: str | None = None) -> Path:
    """Per layer, the head-average signed cosine at ``site`` against the training step (log scale), with the
    retention threshold and each layer's chance band (null 5%-95%) shaded."""
    from .theory import SITES

    target = SITES[site].target
    sub = df[(df["measure"] == "signed_cosine") & (df["site"] == site) & (df["lens"] == lens) & (df["target"] == target)
             & df["layer"].notna() & df["head"].isna()]
    require(len(sub) > 0, f"no head-average signed_cosine rows at site={site!r}, lens={lens!r} to plot")
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    colours = plt.get_cmap("tab10")
    for i, (layer, g) in enumerate(sub.groupby("layer", sort=True)):
        g = g.assign(step=g["checkpoint"].map(checkpoint_step)).dropna(subset=["step"]).sort_values("step")
        x = _plottable(g["step"].to_numpy(dtype=float) + 1.0)
        ax.plot(x, _plottable(g["value"]), marker="o", color=colours(i % 10), label=f"layer {int(layer)}")
        if g["null_q05"].notna().any():
            ax.fill_between(x, _plottable(g["null_q05"]), _plottable(g["null_q95"]), color=colours(i % 10), alpha=0.15,
                            linewidth=0)
    ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.axhline(0.0, color="gray", linewidth=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("training step + 1 (log)")
    ax.set_ylabel(plain(f"signed cosine with {target}"))
    ax.legend(fontsize=8)
    ax.set_title(plain(textwrap.fill(title or f"{site}, {lens}: retention per layer (shaded: chance)", 60)), fontsize=10)
    return _save(fig, path)

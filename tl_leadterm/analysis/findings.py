"""What a table says, in numbers and in words: retention per layer (the paper's layer specialisation as a number)
and the per-site summary of heads above chance that the report states at its top.

* :func:`retention`: per lens, site and layer, the head-average signed cosine with the site's own target
  across checkpoints (ordered by training step): its peak, the first checkpoint at which it falls below
  ``threshold`` and the first at which it falls to chance (percentile < 0.95).  Toy tables (no nulls) use
  ``cosine_leading`` and leave the chance column empty.  ``below_threshold_at``: the first checkpoint after
  the peak below the threshold ("never reached" when the peak is below it, "retained" when it never falls);
  ``at_chance_at``: the first checkpoint after the first above-chance one at which the layer is at chance again
  ("never above chance", "retained").
* :func:`summary`: per model, lens and site, how many heads are above chance (percentile >= 0.95 and a
  positive signed cosine) at which checkpoints, the best such head with its percentile, and one sentence.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from ..theory import SITES
from .heads import ABOVE, rank_heads
from .table import normalise

RETENTION_THRESHOLD = 0.7
RETENTION_COLUMNS = ["lens", "site", "layer", "target", "measure", "threshold", "first_checkpoint", "peak_checkpoint",
                     "peak_value", "below_threshold_at", "at_chance_at", "last_value"]


def _step(name) -> float:
    """The training step in a checkpoint label (``step512`` → 512, ``init`` → 0; no number: last)."""
    s = str(name)
    if s in ("init", "random"):
        return 0.0
    m = re.findall(r"(\d+)", s)
    return float(m[-1]) if m else float("inf")


def retention(df: pd.DataFrame, threshold: float = RETENTION_THRESHOLD) -> pd.DataFrame:
    """Per lens, site and layer: when the head-average alignment falls below ``threshold`` and to chance (module docstring)."""
    df = normalise(df)
    own = df["site"].map(lambda s: SITES[s].target if s in SITES else "")
    real = df[(df["measure"] == "signed_cosine") & df["head"].isna() & df["layer"].notna() & (df["target"] == own)]
    toy = df[(df["measure"] == "cosine_leading") & df["layer"].notna()]
    rows = []
    for measure, sel in (("signed_cosine", real), ("cosine_leading", toy)):
        for (lens, site, layer), g in sel.groupby(["lens", "site", "layer"], sort=True):
            g = g.assign(_step=g["checkpoint"].map(_step)).sort_values("_step", kind="stable")
            if g["checkpoint"].nunique() < 2:
                continue
            vals = g["value"].tolist()
            ck = g["checkpoint"].tolist()
            pk = max(range(len(vals)), key=lambda i: (vals[i] if math.isfinite(vals[i]) else -math.inf))
            if vals[pk] >= threshold:   # the first checkpoint after the peak at which it falls below the threshold
                below = next((ck[i] for i in range(pk, len(vals)) if vals[i] < threshold), "retained")
            else:
                below = "never reached"
            chance = ""
            if measure == "signed_cosine" and g["percentile"].notna().any():
                pct = g["percentile"].tolist()
                up = [i for i, p in enumerate(pct) if p >= ABOVE and vals[i] > 0]
                if not up:
                    chance = "never above chance"
                else:            # the first checkpoint after the first above-chance one that is at chance again
                    chance = next((ck[i] for i in range(up[0], len(vals)) if not (pct[i] >= ABOVE and vals[i] > 0)),
                                  "retained")
            rows.append({"lens": lens, "site": site, "layer": int(layer), "target": g["target"].iloc[0], "measure": measure,
                         "threshold": float(threshold), "first_checkpoint": ck[0], "peak_checkpoint": ck[pk],
                         "peak_value": float(vals[pk]), "below_threshold_at": below, "at_chance_at": chance,
                         "last_value": float(vals[-1])})
    out = pd.DataFrame(rows, columns=RETENTION_COLUMNS)
    out["layer"] = out["layer"].astype("Int64")
    return out


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per lens and site: heads above chance per checkpoint and the best above-chance head, with a sentence.

    Columns ``lens, site, target, n_heads, checkpoints, above_chance, at_checkpoints, best, best_checkpoint,
    best_signed_cosine, best_percentile, anti_aligned, sentence``.
    """
    r = rank_heads(df)
    cols = ["lens", "site", "target", "n_heads", "checkpoints", "above_chance", "at_checkpoints", "best", "best_checkpoint",
            "best_signed_cosine", "best_percentile", "anti_aligned", "sentence"]
    rows = []
    for (lens, site), g in r.groupby(["lens", "site"], sort=False):
        order = sorted(g["checkpoint"].unique(), key=_step)
        n_heads = int(g.groupby("checkpoint").size().max())
        up = g[g["above_chance"]]
        counts = {c: int((up["checkpoint"] == c).sum()) for c in order}
        at = ", ".join(f"{c}: {counts[c]}/{n_heads}" for c in order if counts[c])
        anti = int(g["anti_aligned"].sum())
        target = SITES[site].target
        what = {"weights": "the weights", "update": "the update since the reference",
                "gradient": "the loss gradient"}.get(lens, lens)
        if g["percentile"].isna().all():
            b = g.sort_values("signed_cosine", ascending=False, kind="stable").iloc[0]
            sentence = (f"{what.capitalize()} at {site}: no chance level was computed (null draws off), so no head can be "
                        f"called above chance; the largest signed cosine with {target} is "
                        f"{b['signed_cosine']:.3g} (L{int(b['layer'])}H{int(b['head'])} at {b['checkpoint']}).")
            vals = ("no chance level", "", float("nan"), float("nan"))
        elif len(up):
            b = up.sort_values(["percentile", "signed_cosine"], ascending=False, kind="stable").iloc[0]
            best = f"L{int(b['layer'])}H{int(b['head'])}"
            sentence = (f"{what.capitalize()} of {len(up)} head-checkpoint pairs at {site} align with {target} beyond what "
                        f"random heads read through the same geometry reach (best {best} at {b['checkpoint']}: signed "
                        f"cosine {b['signed_cosine']:.3g}, percentile {b['percentile']:.2f}).")
            vals = (best, b["checkpoint"], float(b["signed_cosine"]), float(b["percentile"]))
        else:
            sentence = (f"No head's {what} at {site} aligns with {target} more than random heads read through the same "
                        "geometry: none above chance.")
            vals = ("none above chance", "", float("nan"), float("nan"))
        if anti:
            sentence += f" {anti} head-checkpoint pairs are anti-aligned (percentile <= 0.05)."
        rows.append({"lens": lens, "site": site, "target": target, "n_heads": n_heads, "checkpoints": len(order),
                     "above_chance": int(len(up)), "at_checkpoints": at or "none", "best": vals[0], "best_checkpoint": vals[1],
                     "best_signed_cosine": vals[2], "best_percentile": vals[3], "anti_aligned": anti, "sentence": sentence})
    return pd.DataFrame(rows, columns=cols)

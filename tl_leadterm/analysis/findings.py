"""What a table says, in numbers and in words: retention per layer (the paper's layer specialisation as a number)
and the per-site summary of heads above chance that the report states at its top.

* :func:`retention`: per lens, site and layer, the head-average signed cosine with the site's own target
  across checkpoints (ordered by training step): its peak, the first checkpoint at which it falls below
  ``threshold`` and the first at which it falls to chance (percentile < 0.95).  Toy tables (no nulls) use
  ``cosine_leading`` and leave the chance column empty.  ``below_threshold_at``: the first checkpoint after
  the peak below the threshold ("never reached" when the peak is below it, "retained" when it never falls);
  ``at_chance_at``: the first checkpoint after the first above-chance one at which the layer is at chance again
  ("never above chance", "retained").
* :func:`summary`: per model, lens and site, how many head-checkpoint pairs are above chance (percentile >= 0.95
  and a positive signed cosine) at which checkpoints, how many chance alone gives (5% of the pairs tested, with a
  binomial p), the best head only when it stands out family-wise among all pairs tested, and one sentence.
"""

from __future__ import annotations

import math
import re
from statistics import NormalDist

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
    from ..params import check

    threshold = check("threshold", threshold, key="fraction")
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


#: the level of every statement the summary makes (family-wise for single heads)
ALPHA = 0.05


def binomial_tail(n: int, m: int, p: float = 1 - ABOVE) -> float:
    """P(X >= m) for X ~ Binomial(n, p): how likely ``m`` or more of ``n`` random heads pass a 5% test."""
    if m <= 0:
        return 1.0
    if m > n:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = (math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * lp + (n - j) * lq
             for j in range(m, n + 1))
    return float(min(1.0, sum(math.exp(t) for t in terms)))


def family_p(z: float, n: int) -> float:
    """Bonferroni bound on the chance that the most extreme of ``n`` random heads lies ``z`` null standard
    deviations out (one-sided, Gaussian tail of :func:`~tl_leadterm.analysis.heads.null_z`)."""
    if not math.isfinite(z):
        return float("nan")
    return float(min(1.0, n * NormalDist().cdf(-abs(z))))


def _p(x: float) -> str:
    """A probability for a sentence: two significant digits, and no false zero where it underflows."""
    return "below 1e-15" if x < 1e-15 else f"{x:.2g}"


def _peq(x: float) -> str:
    """``p = 0.04`` or ``p < 1e-15``."""
    return "p < 1e-15" if x < 1e-15 else f"p = {x:.2g}"


def _head(r) -> str:
    return f"L{int(r['layer'])}H{int(r['head'])}"


def _extremes(g: pd.DataFrame):
    """``(top, bottom)`` rows of a :func:`~tl_leadterm.analysis.rank_heads` group with nulls: the above-chance head
    farthest above its null and the anti-aligned one farthest below (``None`` where there is none).  Either is
    named only when it stands out family-wise: ``family_p(row.null_z, len(g)) < ALPHA``."""
    up = g[g["above_chance"]].sort_values(["null_z", "signed_cosine"], ascending=False, kind="stable")
    anti = g[g["anti_aligned"] & (g["signed_cosine"] < 0)].sort_values(["null_z", "signed_cosine"], kind="stable")
    return (up.iloc[0] if len(up) else None), (anti.iloc[0] if len(anti) else None)


def _stands_out(row, n: int) -> bool:
    return row is not None and family_p(float(row["null_z"]), n) < ALPHA


def featured(df: pd.DataFrame, site: str = "circuit_ov", lens: str = "weights") -> list[tuple[str, pd.Series]]:
    """The heads a report may feature at ``site`` under ``lens``: ``("best", row)`` and ``("most anti-aligned",
    row)`` (rows of :func:`~tl_leadterm.analysis.rank_heads`, any checkpoint), each only when it stands out
    family-wise among all the site's head-checkpoint pairs, as :func:`summary` says.  No nulls: none (a head
    cannot be told from chance)."""
    r = rank_heads(df)
    g = r[(r["lens"] == lens) & (r["site"] == site)]
    g = g[g["percentile"].notna()]
    return [(what, x) for what, x in zip(("best", "most anti-aligned"), _extremes(g)) if _stands_out(x, len(g))]


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per lens and site: how many head-checkpoint pairs pass their chance level, whether that is more than
    chance gives, and the best head only when it stands out among all pairs tested, with a sentence.

    Every pair with a null is one test at the 5% level (``above_chance``), so ``tested`` random heads give
    ``expected_by_chance = 0.05 · tested`` passes; ``count_p`` is the binomial chance of ``above_chance`` or more.
    A head is named (``best``) only when it stands out family-wise: its distance from its null in null standard
    deviations (``best_z``, :func:`~tl_leadterm.analysis.heads.null_z`) is so large that ``tested`` random heads
    would reach it with probability ``best_family_p`` < 0.05 (Bonferroni, Gaussian tail).  Otherwise ``best`` says
    ``none stands out`` (more passes than chance, no single head beyond it) or ``none beyond chance``.  The same
    for anti-alignment (``anti_aligned``, ``anti_count_p``, ``most_anti``).

    Columns ``lens, site, target, n_heads, checkpoints, tested, above_chance, expected_by_chance, count_p,
    at_checkpoints, best, best_checkpoint, best_signed_cosine, best_percentile, best_z, best_family_p, anti_aligned,
    anti_count_p, most_anti, sentence``.
    """
    r = rank_heads(df)
    cols = ["lens", "site", "target", "n_heads", "checkpoints", "tested", "above_chance", "expected_by_chance", "count_p",
            "at_checkpoints", "best", "best_checkpoint", "best_signed_cosine", "best_percentile", "best_z",
            "best_family_p", "anti_aligned", "anti_count_p", "most_anti", "sentence"]
    nan = float("nan")
    rows = []
    for (lens, site), g in r.groupby(["lens", "site"], sort=False):
        order = sorted(g["checkpoint"].unique(), key=_step)
        n_heads = int(g.groupby("checkpoint").size().max())
        target = SITES[site].target
        what, verb = {"weights": ("the weights", "align"), "update": ("the update since the reference", "aligns"),
                      "gradient": ("the loss gradient", "aligns")}.get(lens, (f"the {lens} lens", "aligns"))
        out = {"lens": lens, "site": site, "target": target, "n_heads": n_heads, "checkpoints": len(order)}
        tested = int(g["percentile"].notna().sum())
        if tested == 0:
            b = g.sort_values("signed_cosine", ascending=False, kind="stable").iloc[0]
            out.update(tested=0, above_chance=0, expected_by_chance=nan, count_p=nan, at_checkpoints="no chance level",
                       best="no chance level", best_checkpoint="", best_signed_cosine=nan, best_percentile=nan,
                       best_z=nan, best_family_p=nan, anti_aligned=0, anti_count_p=nan, most_anti="",
                       sentence=(f"{what.capitalize()} at {site}: no chance level was computed (null draws off), so no "
                                 f"head can be called above chance; the largest signed cosine with {target} is "
                                 f"{b['signed_cosine']:.3g} ({_head(b)} at {b['checkpoint']})."))
            rows.append(out)
            continue
        g = g[g["percentile"].notna()]
        up = g[g["above_chance"]]
        counts = {c: int((up["checkpoint"] == c).sum()) for c in order}
        expected = (1 - ABOVE) * tested
        count_p = binomial_tail(tested, len(up))
        out.update(tested=tested, above_chance=int(len(up)), expected_by_chance=expected, count_p=count_p,
                   at_checkpoints=", ".join(f"{c}: {counts[c]}/{n_heads}" for c in order if counts[c]) or "none")
        lead = (f"{what.capitalize()} at {site}: {len(up)} of {tested} head-checkpoint pairs pass the 95th percentile of "
                f"random heads read through the same geometry ({expected:.1f} expected by chance, binomial "
                f"{_peq(count_p)})")
        top, bottom = _extremes(g)
        bz = float(top["null_z"]) if top is not None else nan
        bp = family_p(bz, tested) if top is not None else nan
        b = top if _stands_out(top, tested) else None
        w = bottom if _stands_out(bottom, tested) else None
        if b is not None:
            out.update(best=_head(b), best_checkpoint=b["checkpoint"], best_signed_cosine=float(b["signed_cosine"]),
                       best_percentile=float(b["percentile"]), best_z=bz, best_family_p=bp)
            sentence = (f"{lead}; best {_head(b)} at {b['checkpoint']}: signed cosine {b['signed_cosine']:.3g} with "
                        f"{target}, percentile {b['percentile']:.2f}, {bz:.1f} null standard deviations out, which "
                        f"{tested} random heads would reach with probability {_p(bp)}: it aligns beyond chance.")
        else:
            out.update(best="none stands out" if count_p < ALPHA else "none beyond chance", best_checkpoint="",
                       best_signed_cosine=nan, best_percentile=nan, best_z=bz, best_family_p=bp)
            if count_p < ALPHA:
                sentence = (f"{lead}: more than chance gives, so {what} {'lean' if verb == 'align' else 'leans'} "
                            f"towards {target}, but no single head "
                            f"stands out once the {tested} pairs tested are accounted for.")
            else:
                sentence = (f"{lead}: about as many as chance gives, so this is no evidence that {what} {verb} with "
                            f"{target} beyond what random heads reach; no head is featured.")
        anti = g[g["anti_aligned"]]
        anti_p = binomial_tail(tested, len(anti))
        most_anti = ""
        if w is not None:
            most_anti = _head(w)
            sentence += (f" {len(anti)} pairs are anti-aligned (percentile <= 0.05; {expected:.1f} expected by chance); "
                         f"{most_anti} at {w['checkpoint']} (signed cosine {w['signed_cosine']:.3g}) runs against "
                         f"{target} beyond chance.")
        elif anti_p < ALPHA:
            sentence += (f" {len(anti)} pairs are anti-aligned (percentile <= 0.05; {expected:.1f} expected by chance, "
                         f"{_peq(anti_p)}): more than chance gives.")
        elif len(anti):
            sentence += f" {len(anti)} pairs are anti-aligned (percentile <= 0.05), about as many as chance gives."
        out.update(anti_aligned=int(len(anti)), anti_count_p=anti_p, most_anti=most_anti, sentence=sentence)
        rows.append(out)
    return pd.DataFrame(rows, columns=cols)

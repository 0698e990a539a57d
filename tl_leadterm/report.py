"""A self-contained HTML report: text, tables, images and circuitsvis views in one file.

The file works with no network: the installed circuitsvis package's own bundle
(``circuitsvis/dist/cdn/iife.js``) is inlined **once** in ``<head>`` and every
view renders from the global ``CircuitsVis`` it defines; images are embedded as
``data:`` URIs; there is no external URL (no ``src``/``href`` to ``http``).

Results folder (``tl-leadterm report --results DIR``)
----------------------------------------------------
:func:`build_report` reads whatever of these a folder holds (written by
``tl-leadterm demo``, ``analyze``, ``sweep`` or ``toy-train --log-every``):

* ``analysis.csv`` — tidy analysis table (:mod:`tl_leadterm.analysis.table`): toy rows
  give similarity-vs-step, layer x checkpoint heatmaps and explained-fraction
  bars; real-model rows give layer x checkpoint and head x checkpoint heatmaps;
* ``neox_analysis.csv`` — the same schema for the demo's GPT-NeoX trained from random
  initialisation (checkpoints on Pythia's schedule), with the per-head projections and
  residuals (heads ranked, explained per head and checkpoint, residual pairs and directions);
* ``model_analysis.csv`` — a second table in the same schema (the demo's
  Pythia-architecture model);
* ``monitor.jsonl`` — training-monitor records (similarity vs step);
* ``attention_scales.csv`` — fitted scales per model/layer/head (:meth:`tl_leadterm.visual.AttentionComparison.scale_table`);
* ``associations.csv`` — the explorer's long table (:func:`tl_leadterm.visual.associations`);
* ``views.json`` — saved circuitsvis views (attention, explorer): a list of
  ``{"element", "props", "title", "caption", "section"}``;
* ``summary.json`` — facts shown at the top (settings, notes).

Every field of these files is untrusted (a folder may come from someone else): :mod:`tl_leadterm.results`
checks each against what the package writes and keeps only what is shown; every text is HTML-escaped
where it is shown (plot labels are escaped for matplotlib: a ``$`` is a dollar sign, never mathtext);
views are rendered from JSON data, never from code (:mod:`tl_leadterm.visual.views`).

Plots are written to ``plots_dir`` (default ``plots/`` beside the HTML file): only the files named
there are written, nothing else in that folder is touched.  ``tl-leadterm report --out DIR/NAME.html``
writes them to ``DIR/NAME_plots/``, a folder it owns; ``demo`` to its own ``plots/``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import LeadTermError, require
from .io import check_writable_dir, write_text_atomic
from .theory import LEADING
from .results import read_associations, read_monitor, read_scales, read_summary, read_table, read_views
from .visual import CVView, circuitsvis_bundle

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1150px;padding:1em 2em;color:#222}
h1{border-bottom:2px solid #446;padding-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #ccd}
table.df{border-collapse:collapse;font-size:12px;margin:.5em 0} table.df td,table.df th{border:1px solid #ccd;padding:2px 6px}
table.df th{background:#eef} .caption{color:#555;font-size:13px;margin:.2em 0 .6em} img.plot{max-width:100%;border:1px solid #eee}
.cv-view{min-height:40px} nav a{margin-right:1em} .note{background:#fff8e0;border-left:4px solid #e0b000;padding:.4em .8em}
"""


@dataclass
class Report:
    """Build a report section by section, then :meth:`save` it as one HTML file."""

    title: str = "tl_leadterm report"
    parts: list[str] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)
    n_views: int = 0
    n_headings: int = 0

    def heading(self, text: str, level: int = 2) -> "Report":
        anchor = f"s{self.n_headings}"   # unique per heading, whatever its level
        self.n_headings += 1
        if level == 2:
            self.sections.append((anchor, text))
        self.parts.append(f'<h{level} id="{anchor}">{html.escape(text)}</h{level}>')
        return self

    def text(self, text: str, cls: str = "") -> "Report":
        for para in str(text).split("\n\n"):
            self.parts.append(f'<p{f" class={html.escape(cls, quote=True)!r}" if cls else ""}>{html.escape(para)}</p>')
        return self

    def table(self, df: pd.DataFrame, caption: str = "", max_rows: int = 60, float_format: str = "{:.4g}",
              index: bool = False) -> "Report":
        if caption:
            self.parts.append(f'<p class="caption">{html.escape(caption)}</p>')
        shown = df.head(max_rows)
        fmt = {c: (lambda v, f=float_format: "" if isinstance(v, float) and math.isnan(v) else f.format(v))
               for c in shown.columns if pd.api.types.is_float_dtype(shown[c])}
        self.parts.append('<div style="overflow-x:auto">' + shown.to_html(classes="df", border=0, escape=True, formatters=fmt,
                                                                          na_rep="", index=index) + "</div>")
        if len(df) > max_rows:
            self.parts.append(f'<p class="caption">({len(df) - max_rows} more rows in the CSV file)</p>')
        return self

    def image(self, path: str | os.PathLike, caption: str = "", alt: str = "") -> "Report":
        p = Path(path)
        require(p.is_file(), f"image {p} not found")
        mime = {".png": "image/png", ".svg": "image/svg+xml"}.get(p.suffix.lower())
        require(mime is not None, f"image {p} must be .png or .svg")
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        self.parts.append(f'<figure><img class="plot" alt="{html.escape(alt or p.stem)}" src="data:{mime};base64,{data}"/>'
                          + (f'<figcaption class="caption">{html.escape(caption)}</figcaption>' if caption else "") + "</figure>")
        return self

    def view(self, v: CVView) -> "Report":
        if v.title:
            self.parts.append(f"<h3>{html.escape(v.title)}</h3>")
        if v.caption:
            self.parts.append(f'<p class="caption">{html.escape(v.caption)}</p>')
        self.n_views += 1
        self.parts.append(v.fragment(id=f"cv-{self.n_views}"))  # unique in the page, and the same every run
        return self

    def render(self) -> str:
        nav = " ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in self.sections)
        body = "\n".join(self.parts)
        bundle = f"<script>{circuitsvis_bundle()}</script>" if self.n_views else ""
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
                f"<title>{html.escape(self.title)}</title><style>{CSS}</style>\n{bundle}\n</head>\n<body>\n"
                f"<h1>{html.escape(self.title)}</h1>\n<nav>{nav}</nav>\n{body}\n</body></html>\n")

    def save(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        write_text_atomic(p, self.render())
        return p


# ---------------------------------------------------------------------------
# from a results folder
# ---------------------------------------------------------------------------
def add_analysis_section(rep: Report, df: pd.DataFrame, plots_dir: Path, stem: str, label: str) -> None:
    """Plots and tables for one analysis table (toy or real model)."""
    from . import plots

    toy = bool(df["site"].isin(list(LEADING)).any()) and "cosine_leading" in set(df["measure"])
    ckpts = plots.order_checkpoints(df["checkpoint"].tolist())
    if toy:
        ser = plots.series_from_analysis(df, "cosine_leading")
        if len(ckpts) > 1 and ser["step"].notna().all():
            out = plots.save_both(plots.similarity_vs_step, ser, plots_dir / f"{stem}_similarity_vs_step",
                                  title=f"{label}: cosine with the leading term per checkpoint")
            rep.image(out[0], "Cosine of each weight (basis-token sub-block) with its leading term "
                              f"({', '.join(f'{w}↔{t.symbol}' for w, t in LEADING.items())}), per checkpoint.")
        for site in ("V", "W", "P"):
            if ((df["site"] == site) & (df["measure"] == "cosine_leading") & df["layer"].notna()).any():
                out = plots.save_both(plots.checkpoint_heatmap, df, plots_dir / f"{stem}_heatmap_{site}", measure="cosine_leading",
                                      site=site, rows="layer", title=f"{label}: cosine of {site} with its leading term, layer × checkpoint")
                rep.image(out[0], f"Layer × checkpoint: cosine of {site}.l with its leading term.")
        out = plots.save_both(plots.explained_bars, df, plots_dir / f"{stem}_explained",
                              title=f"{label}: explained fraction at {ckpts[-1] or 'the last checkpoint'}")
        rep.image(out[0], "Explained fraction ‖proj‖²/‖W‖² of each weight by the least-squares projection on its leading term.")
        keep = df[df["measure"].isin(["cosine_leading", "explained", "residual_rel_norm"]) & (df["checkpoint"] == ckpts[-1])]
        rep.table(keep[["checkpoint", "layer", "site", "measure", "value", "target"]].reset_index(drop=True),
                  caption="Summary at the last checkpoint.")
        pairs = df[(df["measure"] == "residual_pair") & (df["checkpoint"] == ckpts[-1])]
        if len(pairs):
            rep.table(pairs[["layer", "site", "value", "detail"]].reset_index(drop=True),
                      caption="Beyond the leading term: the largest residual entries (row token → column token).", max_rows=40)
        return
    # real model
    if "lens" in df and (df["measure"] == "signed_cosine").any():
        add_lens_section(rep, df, plots_dir, stem, label, ckpts)
        df = df[df["lens"] == "weights"]
    meas = "cov_cosine" if "cov_cosine" in set(df["measure"]) else str(df["measure"].iloc[0])
    for site in ("key_query", "resid_pre", "resid_post"):
        if ((df["site"] == site) & (df["measure"] == meas)).any():
            out = plots.save_both(plots.checkpoint_heatmap, df, plots_dir / f"{stem}_layers_{site}", measure=meas, site=site,
                                  rows="layer", title=f"{label}: {meas} of {site}, layer × checkpoint")
            rep.image(out[0], f"Layer × checkpoint: {meas} of {site} with its theory matrix (THEORY.md §5); one fixed "
                              "colour scale for the measure; grey cells are at chance (percentile between 0.05 and 0.95).")
    heads = df[(df["site"] == "key_query") & (df["measure"] == meas) & df["head"].notna()]
    for layer in sorted(heads["layer"].dropna().unique()):
        out = plots.save_both(plots.checkpoint_heatmap, df, plots_dir / f"{stem}_heads_L{int(layer)}", measure=meas,
                              site="key_query", rows="head", layer=layer,
                              title=f"{label}: {meas} of key-query vs Q̄, head × checkpoint, layer {int(layer)}")
        rep.image(out[0], f"Head × checkpoint, layer {int(layer)}: {meas} of (A W_Q)(A W_K)ᵀ with Q̄; grey cells are at "
                          "chance: random heads read through the same attention inputs reach them.")
    summ = df[df["head"].isna() & df["measure"].isin([meas, "cka"]) & (df["checkpoint"] == ckpts[-1])]
    rep.table(summ[["checkpoint", "layer", "site", "measure", "value", "target", "extension"]].reset_index(drop=True),
              caption="Per-layer similarities at the last checkpoint (head averages).")
    if (df["measure"].eq("explained") & df["head"].notna()).any():
        add_beyond_section(rep, df, plots_dir, stem, label, ckpts)


def add_beyond_section(rep: Report, df: pd.DataFrame, plots_dir: Path, stem: str, label: str, ckpts: list) -> None:
    """Per head: what the leading term explains modulo row offsets, the ranking, and the residual beyond it."""
    from . import plots
    from .analysis import rank_heads
    from .analysis.findings import featured
    from .analysis.heads import HEAD_SITES

    last = ckpts[-1]
    rep.heading(f"Beyond the leading term: {label}", level=3)
    rep.text("Each head's token-space matrices on the basis tokens (key_query: (A W_Q)(A W_K)ᵀ; circuit_qk: "
             "E W_Q W_Kᵀ Eᵀ, both against Q̄; circuit_ov: E W_V W_O U against Ḡ; circuit_ov_embed: E W_V W_O Eᵀ against M) "
             "are projected on their leading term by least squares after centring each row (softmax ignores a constant "
             "per row). The signed cosine is the alignment (its square the share explained); the percentile places it "
             "among random heads read through the same geometry; the residual is what the head does beyond it.")
    ranking = rank_heads(df[df["checkpoint"] == last])
    has_null = ranking["percentile"].notna().any()
    for site in HEAD_SITES:
        if (df["site"].eq(site) & df["measure"].eq("signed_cosine") & df["head"].notna()).any() and len(ckpts) > 1:
            out = plots.save_both(plots.signed_heatmap, df, plots_dir / f"{stem}_signed_{site}", site=site, lens="weights",
                                  title=f"{label}: signed cosine at {site}, head × checkpoint (weights)")
            rep.image(out[0], f"Every head at {site} across checkpoints: signed cosine with its leading term, one diverging "
                              "scale for the whole measure; grey cells are at chance (percentile between 0.05 and 0.95).")
    rep.table(ranking.drop(columns=["null_mean", "null_q05"]), max_rows=40,
              caption=f"Heads ranked per site at {last} by percentile, then distance from the null (null_z, in null "
                      "standard deviations), then signed cosine (above_chance: percentile >= 0.95 and positive; "
                      "anti_aligned: percentile <= 0.05; each flag is a 5% test, so about 1 random head in 20 gets it).")

    if has_null:
        picks = featured(df, "circuit_ov")
        if not picks and (ranking["site"] == "circuit_ov").any():
            rep.text("No OV head stands out from random heads read through the same geometry (Findings, above): none is "
                     "featured, its residual being no more telling than a random head's.", "note")
    else:   # no chance level: the extremes at the last checkpoint, said to be unjudged
        ov = ranking[ranking["site"] == "circuit_ov"]
        picks = [("best aligned (no chance level)", ov.iloc[0]), ("least aligned (no chance level)", ov.iloc[-1])] if len(ov) else []
    for what, r in picks:
        ck = r["checkpoint"]
        sel = ((df["checkpoint"] == ck) & (df["lens"] == r["lens"]) & (df["site"] == "circuit_ov")
               & (df["layer"] == r["layer"]) & (df["head"] == r["head"]) & df["measure"].isin(["residual_pair", "residual_sv"]))
        pct = "" if pd.isna(r["percentile"]) else f", percentile {r['percentile']:.2f}, {r['null_z']:.1f} null sd"
        rep.table(df[sel][["measure", "value", "rank", "row_token", "col_token", "detail"]].reset_index(drop=True),
                  caption=f"Beyond the leading term, the {what} OV head L{int(r['layer'])}H{int(r['head'])} at {ck} "
                          f"(signed cosine {r['signed_cosine']:.3g}{pct}): largest residual entries (source → output token) "
                          "and top singular directions of the residual.")


#: the analysis tables a results folder may hold, and how the report names them
TABLES = (("analysis.csv", "Analysis"), ("neox_analysis.csv", "Trained GPT-NeoX model"),
          ("model_analysis.csv", "Pythia-architecture model"))

READING_GUIDE = (
    "How to read these numbers. cosine: the plain Frobenius cosine of a head's token-space matrix with the theory "
    "matrix (rows and columns index the same tokens), dominated by per-row constants that softmax ignores. "
    "signed_cosine: the same after centring every row, with the sign of the least-squares coefficient; its square is "
    "'explained', the share of the row-centred matrix the leading term accounts for. A negative signed cosine is "
    "anti-alignment, never 'explained'. cov_cosine: the paper's representational similarity (row covariances), blind to "
    "sign and strongly shaped by the embeddings alone. Use signed_cosine with its percentile: the fraction of random "
    "heads of the same shape, read through the same embeddings and inputs, that it beats. A head is above chance at "
    "percentile >= 0.95 with a positive sign; anti-aligned at <= 0.05. Each flag is one test at the 5% level: among "
    "many heads about 1 in 20 random heads passes, so count passes against that (the findings above do) before "
    "reading one head. A percentile from N null draws is itself uncertain (about ±0.015 at 0.95 with 200 draws; "
    "raise --null-draws to sharpen it); null_z, the distance from the null mean in null standard deviations, still "
    "separates heads beyond every draw.")


def add_findings_summary(rep: Report, tables: list[tuple[str, pd.DataFrame]]) -> None:
    """The report's top section: per table (model), lens and site, heads above chance against what chance gives,
    the head that stands out (if any) and one sentence each (:func:`tl_leadterm.analysis.summary`), and how to
    read the numbers."""
    from .analysis.findings import summary

    found = [(label, summary(df)) for label, df in tables
             if "lens" in df and (df["measure"] == "signed_cosine").any()]
    found = [(label, summ) for label, summ in found if len(summ)]
    if not found:
        return
    rep.heading("Findings")
    rep.text("What the per-head fits found, judged against their chance level: random heads of the same shapes read "
             "through the same embeddings and inputs (README: 'A chance level for every fit'). A site counts as evidence "
             "only when more head-checkpoint pairs pass the 95th percentile than chance gives, and a head is named only "
             "when it stands out among all the pairs tested.")
    for label, summ in found:
        rep.heading(f"Findings: {label}", level=3)
        for lens, g in summ.groupby("lens", sort=False):
            rep.text(f"Lens '{lens}': " + " ".join(g["sentence"].tolist()))
        rep.table(summ.drop(columns=["sentence"]), caption="Per lens and site: head-checkpoint pairs tested and above "
                  "chance (percentile >= 0.95, positive), how many chance gives (5%) and the binomial p of the count, "
                  "where, and the head that stands out family-wise (z: null standard deviations; family p: Bonferroni "
                  "over the pairs tested), if any.", max_rows=40)
    rep.text(READING_GUIDE)


def add_lens_section(rep: Report, df: pd.DataFrame, plots_dir: Path, stem: str, label: str, ckpts: list) -> None:
    """Retention per layer and the update and gradient lenses of one table (its findings are at the top)."""
    from . import plots
    from .analysis.findings import retention

    if not ((df["lens"] != "weights").any() or df["checkpoint"].nunique() > 1):
        return
    rep.heading(f"Retention and lenses: {label}", level=3)
    ret = retention(df)
    if len(ret):
        rep.table(ret, caption="Retention per layer (head average, own target): the peak, the first checkpoint below the "
                               "threshold and the first at chance (percentile < 0.95).", max_rows=40)
        for lens in dict.fromkeys(ret["lens"]):
            for site in ("circuit_ov", "key_query"):
                if ((ret["lens"] == lens) & (ret["site"] == site)).any():
                    out = plots.save_both(plots.retention_plot, df, plots_dir / f"{stem}_retention_{lens}_{site}", site=site,
                                          lens=lens, title=f"{label}: {site} ({lens}) per layer")
                    rep.image(out[0], f"Head-average signed cosine at {site} under the {lens} lens per layer against the "
                                      "step, the 0.7 threshold dashed, each layer's chance band shaded.")
    for lens in ("update", "gradient"):
        if (df["lens"] == lens).any() and df[(df["lens"] == lens)]["checkpoint"].nunique() >= 1:
            sub = df[(df["lens"] == lens) & (df["site"] == "circuit_ov")]
            if (sub["measure"] == "signed_cosine").any() and sub["checkpoint"].nunique() > 1:
                out = plots.save_both(plots.signed_heatmap, df, plots_dir / f"{stem}_signed_circuit_ov_{lens}",
                                      site="circuit_ov", lens=lens, title=f"{label}: signed cosine at circuit_ov ({lens} lens)")
                rep.image(out[0], f"The {lens} lens at circuit_ov: signed cosine with Ḡ per head and checkpoint "
                                  "(grey: at chance).")
    grad = df[(df["lens"] == "gradient") & (df["measure"] == "explained") & df["head"].isna() & df["layer"].notna()]
    if len(grad):
        piv = grad.pivot_table(index=["checkpoint", "site", "layer"], columns="target", values="value", aggfunc="first")
        rep.table(piv.reset_index(), caption="Gradient lens, head averages: share of the row-centred gradient explained by "
                                             "each target (model:T = the target read through the model's own geometry).")


def check_results_dir(d: Path | str) -> Path:
    """``d`` as a results folder, or a one-line error that says what it is instead."""
    d = Path(d)
    if not d.is_dir():
        what = ("not found" if not d.exists() and not d.is_symlink() else "is a broken symbolic link" if not d.exists()
                else "is a file, not a folder" if d.is_file() else "is a device or other special file, not a folder")
        raise LeadTermError(f"results folder {d} {what}; give a folder written by 'tl-leadterm demo', 'analyze' or 'sweep'")
    return d


def build_report(results: Path | str | list, out: Path | str, *, title: str = "tl_leadterm report",
                 extra_views: list[tuple[str, CVView]] | None = None, plots_dir: Path | str | None = None) -> Path:
    """Assemble ``out`` (an .html file) from one or more results folders (module docstring).

    ``plots_dir``: where the plots' PNG and SVG files go (default ``plots/`` beside ``out``); only files
    of the names the report writes are replaced there.
    """
    from . import plots

    dirs = [check_results_dir(d) for d in (results if isinstance(results, (list, tuple)) else [results])]
    out = Path(out)
    require(not out.is_dir(), f"cannot write the report to {out}: it is a folder; give the path of an .html file")
    require(not out.exists() or out.is_file(), f"cannot write the report to {out}: it is a device or other special file, "
                                               "not a regular file; give the path of an .html file")
    check_writable_dir(out.parent)
    plots_dir = Path(plots_dir) if plots_dir is not None else out.parent / "plots"
    require(not plots_dir.exists() or plots_dir.is_dir(), f"the plots folder {plots_dir} is a file, not a folder; move it "
                                                          "away or give another plots_dir")
    rep = Report(title)
    found = 0
    for d in dirs:
        summ = d / "summary.json"
        if summ.is_file():
            facts = read_summary(summ)
            rep.heading("Run")
            if facts.get("text"):
                rep.text(str(facts.pop("text")))
            facts.pop("text", None)
            rep.table(pd.DataFrame([{"setting": k, "value": json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}
                                    for k, v in facts.items()], columns=["setting", "value"]))
            found += 1
    tables = {}   # every table read once, its findings stated at the top
    for i, d in enumerate(dirs):
        for fname, label in TABLES:
            if (d / fname).is_file():
                tables[(i, fname)] = (f"{label} ({d.name})" if len(dirs) > 1 else label, read_table(d / fname))
    add_findings_summary(rep, list(tables.values()))
    views: list[tuple[str, CVView]] = list(extra_views or [])
    for d in dirs:
        if (d / "views.json").is_file():
            views += read_views(d / "views.json")
    for section in dict.fromkeys(s for s, _ in views):
        rep.heading(section)
        if section.startswith("Attention"):
            rep.text("Each layer shows, per head, the model's attention pattern and the pattern the leading term predicts: "
                     "softmax over keys of c·(Q̄[query token, key token] + p̄[query position − key position]), with one "
                     "scale c per layer and head fitted by least squares to the model's own scores (free offset per query "
                     "row, since softmax ignores it). Tokens marked † are outside the basis vocabulary: their Q̄ term is 0.")
        for s, v in views:
            if s == section:
                rep.view(v)
        found += 1
    for d in dirs:
        if (d / "attention_scales.csv").is_file():
            rep.heading("Fitted attention scales")
            rep.table(read_scales(d / "attention_scales.csv"),
                      caption="Per layer and head: the least-squares scale c of the leading-term scores (anti-aligned when "
                              "c < 0: the scores run against the leading term), the relative residual of that fit, the mean "
                              "total-variation distance between the model's and the predicted pattern, and between the "
                              "model's pattern and uniform attention (a small pattern_tv means little when uniform_tv is "
                              "small too).")
            found += 1
    for i, d in enumerate(dirs):
        tag = f"{i}_" if len(dirs) > 1 else ""
        if (d / "associations.csv").is_file():
            from .visual import association_table
            adf = read_associations(d / "associations.csv")
            rep.heading("Association tables")
            for tok in dict.fromkeys(adf["token"]):
                rep.table(association_table(adf, tok).reset_index(), caption=f"Top associates of {tok!r} per source "
                          "(B̄: next tokens; Φ̄: context tokens; ΣB̄: interchangeable; M, Ḡ: token in context; Q̄: keys of the token as query; "
                          "learned/residual: toy weights and what lies beyond their leading term).")
            found += 1
        if (d / "monitor.jsonl").is_file():
            recs = read_monitor(d / "monitor.jsonl")
            ser = plots.series_from_monitor(recs)
            if len(ser):
                rep.heading("Training monitor")
                out_p = plots.save_both(plots.similarity_vs_step, ser, plots_dir / f"{tag}monitor_similarity",
                                        title="Similarity to the leading term during training (training monitor)")
                rep.image(out_p[0], "Cosine of each toy weight with its leading term, logged during training "
                                    "(the paper's figure: the leading term dominates early).")
                found += 1
        for fname, label in TABLES:
            if (i, fname) in tables:
                df = tables[(i, fname)][1]
                rep.heading(f"{label} ({fname})")
                if len(df) == 0:
                    rep.text("The table is empty.", "note")
                else:
                    add_analysis_section(rep, df, plots_dir, f"{tag}{Path(fname).stem}", label)
                found += 1
    require(found > 0, "the results folder(s) hold nothing to report (analysis.csv, model_analysis.csv, monitor.jsonl, "
                       "associations.csv, views.json or summary.json); run 'tl-leadterm demo' or 'analyze' first")
    return rep.save(out)

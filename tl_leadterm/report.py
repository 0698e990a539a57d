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
* ``summary.json`` — free-form facts shown at the top (settings, timings).
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

from .errors import require
from .io import write_text_atomic
from .theory import LEADING
from .results import read_csv, read_json, read_monitor, read_table, read_views
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
            self.parts.append(f'<p{f" class={cls!r}" if cls else ""}>{html.escape(para)}</p>')
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

    plots_dir.mkdir(parents=True, exist_ok=True)
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
    meas = "cov_cosine" if "cov_cosine" in set(df["measure"]) else str(df["measure"].iloc[0])
    for site in ("key_query", "resid_pre", "resid_post"):
        if ((df["site"] == site) & (df["measure"] == meas)).any():
            out = plots.save_both(plots.checkpoint_heatmap, df, plots_dir / f"{stem}_layers_{site}", measure=meas, site=site,
                                  rows="layer", title=f"{label}: {meas} of {site}, layer × checkpoint")
            rep.image(out[0], f"Layer × checkpoint: {meas} of {site} with its theory matrix (THEORY.md §5).")
    heads = df[(df["site"] == "key_query") & (df["measure"] == meas) & df["head"].notna()]
    for layer in sorted(heads["layer"].dropna().unique()):
        out = plots.save_both(plots.checkpoint_heatmap, df, plots_dir / f"{stem}_heads_L{int(layer)}", measure=meas,
                              site="key_query", rows="head", layer=layer,
                              title=f"{label}: {meas} of key-query vs Q̄, head × checkpoint, layer {int(layer)}")
        rep.image(out[0], f"Head × checkpoint, layer {int(layer)}: {meas} of (A W_Q)(A W_K)ᵀ with Q̄.")
    summ = df[df["head"].isna() & df["measure"].isin([meas, "cka"]) & (df["checkpoint"] == ckpts[-1])]
    rep.table(summ[["checkpoint", "layer", "site", "measure", "value", "target", "extension"]].reset_index(drop=True),
              caption="Per-layer similarities at the last checkpoint (head averages).")
    if (df["measure"].eq("explained") & df["head"].notna()).any():
        add_beyond_section(rep, df, plots_dir, stem, label, ckpts)


def add_beyond_section(rep: Report, df: pd.DataFrame, plots_dir: Path, stem: str, label: str, ckpts: list) -> None:
    """Per head: what the leading term explains modulo row offsets, the ranking, and the residual beyond it."""
    from . import plots
    from .analysis import rank_heads
    from .analysis.heads import HEAD_SITES

    last = ckpts[-1]
    rep.heading(f"Beyond the leading term: {label}", level=3)
    rep.text("Each head's token-space matrices on the basis tokens (key_query: (A W_Q)(A W_K)ᵀ; circuit_qk: "
             "E W_Q W_Kᵀ Eᵀ, both against Q̄; circuit_ov: E W_V W_O U against Ḡ; circuit_ov_embed: E W_V W_O Eᵀ against M) "
             "are projected on their leading term by least squares after centring each row (softmax ignores a constant "
             "per row). 'explained' is the share of the centred matrix that the leading term accounts for; the residual "
             "is what the head does beyond it.")
    ranking = rank_heads(df[df["checkpoint"] == last])
    for site in HEAD_SITES:
        if (df["site"].eq(site) & df["measure"].eq("explained") & df["head"].notna()).any():
            out = plots.save_both(plots.head_grid, df, plots_dir / f"{stem}_explained_{site}", site=site, checkpoint=last,
                                  title=f"{label}: explained by the leading term at {site}, layer × head ({last})")
            rep.image(out[0], f"Layer × head at {last}: fraction of each head's row-centred {site} matrix explained by "
                              "its leading term.")
    if len(ckpts) > 1:
        out = plots.save_both(plots.checkpoint_heatmap, df, plots_dir / f"{stem}_explained_sweep", measure="explained",
                              site="circuit_ov", rows="layer_head", title=f"{label}: explained at circuit_ov, head × checkpoint")
        rep.image(out[0], "Every head's OV circuit across checkpoints: the fraction its leading term Ḡ explains.")
    rep.table(ranking, caption=f"Heads ranked by the explained fraction per site at {last} (1 = best explained by corpus "
                               "statistics).", max_rows=40)
    ov = ranking[ranking["site"] == "circuit_ov"]
    if len(ov):
        picks = {"best explained": ov.iloc[0], "least explained": ov.iloc[-1]}
        for what, r in picks.items():
            sel = ((df["checkpoint"] == last) & (df["site"] == "circuit_ov") & (df["layer"] == r["layer"])
                   & (df["head"] == r["head"]) & df["measure"].isin(["residual_pair", "residual_sv"]))
            rep.table(df[sel][["measure", "value", "detail"]].reset_index(drop=True),
                      caption=f"Beyond the leading term, {what} OV head L{int(r['layer'])}H{int(r['head'])} "
                              f"(explained {r['explained']:.3f}): largest residual entries (source → output token) "
                              "and top singular directions of the residual.")


def build_report(results: Path | str | list, out: Path | str, *, title: str = "tl_leadterm report",
                 extra_views: list[tuple[str, CVView]] | None = None) -> Path:
    """Assemble ``out`` (an .html file) from one or more results folders (module docstring)."""
    from . import plots

    dirs = [Path(d) for d in (results if isinstance(results, (list, tuple)) else [results])]
    for d in dirs:
        require(d.is_dir(), f"results folder {d} not found; give a folder written by 'tl-leadterm demo', 'analyze' or 'sweep'")
    out = Path(out)
    plots_dir = out.parent / "plots"
    rep = Report(title)
    found = 0
    for d in dirs:
        summ = d / "summary.json"
        if summ.is_file():
            facts = read_json(summ, dict, "object of settings")
            rep.heading("Run")
            if isinstance(facts, dict) and facts.get("text"):
                rep.text(str(facts.pop("text")))
            rep.table(pd.DataFrame([{"setting": k, "value": json.dumps(v) if not isinstance(v, str) else v}
                                    for k, v in (facts.items() if isinstance(facts, dict) else [])]))
            found += 1
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
            rep.table(read_csv(d / "attention_scales.csv", numeric=("layer", "head", "scale", "fit_residual"),
                               text=("model",), what="attention-scale table"),
                      caption="Per layer and head: the least-squares scale c of the leading-term scores, the relative residual "
                              "of that fit, and the mean total-variation distance between the model's and the predicted pattern.")
            found += 1
    for i, d in enumerate(dirs):
        tag = f"{i}_" if len(dirs) > 1 else ""
        if (d / "associations.csv").is_file():
            from .visual import association_table
            adf = read_csv(d / "associations.csv", numeric=("rank", "value"), text=("token", "source", "associate"),
                           what="associations table")
            adf["rank"] = adf["rank"].astype(int)
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
        for fname, label in (("analysis.csv", "Analysis"), ("neox_analysis.csv", "Trained GPT-NeoX model"),
                             ("model_analysis.csv", "Pythia-architecture model")):
            if (d / fname).is_file():
                df = read_table(d / fname)
                rep.heading(f"{label} ({fname})")
                if len(df) == 0:
                    rep.text("The table is empty.", "note")
                else:
                    add_analysis_section(rep, df, plots_dir, f"{tag}{Path(fname).stem}", label)
                found += 1
    require(found > 0, "the results folder(s) hold nothing to report (analysis.csv, model_analysis.csv, monitor.jsonl, "
                       "associations.csv, views.json or summary.json); run 'tl-leadterm demo' or 'analyze' first")
    return rep.save(out)

"""A results folder is data, never code: every field of every file ``report`` reads is untrusted.

Crafted folders put script payloads into every field the report shows (escaped, and proven inert in headless
Chromium), and hostile or malformed values into every field it checks (refused in one line, CLI and Python
API alike).  Plot labels are never matplotlib mathtext, and non-finite values never set an axis limit.
"""

import contextlib
import copy
import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tl_leadterm import LeadTermError
from tl_leadterm.cli import main
from tl_leadterm.report import build_report
from tl_leadterm.visual import CVView
from tl_leadterm.visual.views import script_json

# the script every payload tries to run: it would mark the page with a word that appears nowhere in the source
RUN = "document.documentElement.setAttribute('data-x','pw'+'ned');document.title='pw'+'ned'"
PAYLOADS = [
    f"</script><script>{RUN}</script>",
    f"<!--<script>{RUN}</script>-->",
    f"<img src=x onerror=\"{RUN}\">",
    f"<svg onload={RUN}>",
    f"\"}});{RUN};//",
    f"');{RUN};//",
    f"\u2028\u2029{RUN}\u2028",
    f"</title></style><script>{RUN}</script>",
    f"</textarea><iframe srcdoc=\"<script>parent.{RUN}</script>\"></iframe>",
    f"${{{RUN}}}`",
]
PAY = "".join(PAYLOADS)
MARK = "pwned"


def run(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue()


# ---------------------------------------------------------------------------
# a valid results folder of every file the report reads, small
# ---------------------------------------------------------------------------
def base_files() -> dict:
    n = 3
    att = (np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]).round(4).tolist()
    views = [
        {"element": "AttentionHeads", "section": "Attention: toy", "title": "layer 0", "caption": "cap",
         "props": {"attention": [att, att], "tokens": ["a", "b", "c"], "attentionHeadNames": ["h0", "h1"], "maskUpperTri": True}},
        {"element": "ColoredTokensMulti", "section": "Association explorer", "title": "assoc", "caption": "cap",
         "props": {"tokens": [" a ", " b "], "values": [[1.0, -0.5], [0.2, None]], "labels": ["B̄", "Q̄"]}},
    ]
    rows = []
    for ck in ("step1", "step4"):
        for site in ("V", "W"):
            for m in ("cosine_leading", "explained"):
                rows.append(dict(checkpoint=ck, layer=0, head="", site=site, measure=m, value=0.5, target="bigram", detail="",
                                 extension=False))
        rows.append(dict(checkpoint=ck, layer=0, head="", site="V", measure="residual_pair", value=0.1, target="",
                         detail="a → b", extension=False))
    assoc = [dict(token="bird", source=s, rank=r, associate=f"w{r}", value=1.0 / r, description="d")
             for s in ("B̄", "Φ̄") for r in (1, 2)]
    scales = [dict(model="toy", layer=0, head=h, scale=1.5, fit_residual=0.2, pattern_tv=0.1) for h in (0, 1)]
    mon = [{"step": s, "loss": 1.0, "kind": "toy", "similarity": {"W_O": 0.9, "V.0": None}, "explained": {"W_O": 0.8},
            "residual_norm": {}} for s in (1, 2)]
    return {"views.json": views, "summary.json": {"text": "run", "corpus": "builtin:stories", "steps": 3},
            "analysis.csv": rows, "associations.csv": assoc, "attention_scales.csv": scales, "monitor.jsonl": mon}


def write_folder(d: Path, files: dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, obj in files.items():
        if isinstance(obj, (str, bytes)):
            (d / name).write_bytes(obj.encode("utf-8") if isinstance(obj, str) else obj)
        elif name.endswith(".csv"):
            pd.DataFrame(obj).to_csv(d / name, index=False)
        elif name.endswith(".jsonl"):
            (d / name).write_text("".join(json.dumps(r) + "\n" for r in obj), encoding="utf-8")
        else:
            (d / name).write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return d


def mutate(**changes):
    """A function giving the base files with ``changes`` applied: ``{file: fn(obj) -> obj}``."""
    def make():
        f = base_files()
        for name, fn in changes.items():
            f[name.replace("__", ".").replace("_dot_", ".")] = fn(copy.deepcopy(f.get(name.replace("__", "."))))
        return f
    return make


def setp(path: list, value):
    def fn(obj):
        o = obj
        for k in path[:-1]:
            o = o[k]
        o[path[-1]] = value
        return obj
    return fn


def col(c, value, row=0):
    def fn(rows):
        rows[row][c] = value
        return rows
    return fn


# ---------------------------------------------------------------------------
# every shown field carries every payload: accepted, escaped, inert
# ---------------------------------------------------------------------------
SHOWN = [
    ("view title", mutate(views__json=setp([0, "title"], PAY))),
    ("view caption", mutate(views__json=setp([0, "caption"], PAY))),
    ("view section", mutate(views__json=setp([0, "section"], PAY))),
    ("view tokens", mutate(views__json=setp([0, "props", "tokens"], [PAY, "b", "</script>"]))),
    ("view head names", mutate(views__json=setp([0, "props", "attentionHeadNames"], [PAY, "<!--"]))),
    ("view labels", mutate(views__json=setp([1, "props", "labels"], [PAY, "&lt;\u2028"]))),
    ("summary text", mutate(summary__json=setp(["text"], PAY))),
    ("summary key", mutate(summary__json=lambda s: {**s, **{p: "x" for p in PAYLOADS}})),
    ("summary value", mutate(summary__json=setp(["corpus"], PAY))),
    ("summary nested value", mutate(summary__json=setp(["nested"], {PAYLOADS[0]: [PAY, 1, None]}))),
    ("analysis checkpoint", mutate(analysis__csv=lambda rows: [{**r, "checkpoint": r["checkpoint"] + PAY} for r in rows])),
    ("analysis detail", mutate(analysis__csv=lambda rows: [{**r, "detail": PAY} for r in rows])),
    ("association token", mutate(associations__csv=lambda rows: [{**r, "token": PAY} for r in rows])),
    ("association source", mutate(associations__csv=lambda rows: [{**r, "source": r["source"] + PAY} for r in rows])),
    ("association associate", mutate(associations__csv=col("associate", PAY))),
    ("scale model", mutate(attention_scales__csv=col("model", PAY))),
]


RAW = ["<script>" + RUN[:30], "<img src=x onerror", "<svg onload", "<iframe srcdoc", "<!--<script>", "</title></style>",
       "</textarea>"]


def _raw_payload_absent(page: str) -> None:
    """No tag of a payload reaches the page as markup (the bundle in <head> is the package's own)."""
    body = page.split("</head>", 1)[1]
    for raw in RAW:
        assert raw not in body, raw
    assert "<title>" + "</title>" not in page


@pytest.mark.parametrize("name,files", SHOWN, ids=[c[0] for c in SHOWN])
def test_shown_fields_are_escaped(tmp_path, name, files):
    res = write_folder(tmp_path / "res", files())
    rc, err = run(["report", "--results", res, "--out", tmp_path / "cli" / "r.html", "--title", PAY])
    assert rc == 0, err
    out = build_report(res, tmp_path / "api" / "r.html", title=PAY)
    for page in ((tmp_path / "cli" / "r.html").read_text(encoding="utf-8"), out.read_text(encoding="utf-8")):
        _raw_payload_absent(page)
        body = page.split("</head>", 1)[1]
        for block in re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', page, re.S):
            assert "<" not in block and "\u2028" not in block and "\u2029" not in block
            json.loads(block)                                    # still the data it was
        # every inline script is one of the package's: the bundle or a render call reading JSON data
        for s in re.findall(r"<script>(.*?)</script>", body, re.S):
            assert re.fullmatch(r'CircuitsVis\.render\("cv-\d+", CircuitsVis\.(AttentionHeads|ColoredTokensMulti), '
                                r'JSON\.parse\(document\.getElementById\("cv-\d+-props"\)\.textContent\)\);', s), s[:200]


def test_shown_payloads_reach_the_page_as_text(tmp_path):
    """The escaping keeps the data: the payload is in the page as text, and in the JSON as the same string."""
    res = write_folder(tmp_path / "res", mutate(views__json=setp([0, "props", "tokens"], [PAY, "b", "c"]),
                                                summary__json=setp(["text"], PAY))())
    page = build_report(res, tmp_path / "r.html").read_text(encoding="utf-8")
    assert html.escape(PAYLOADS[0]) in page
    blocks = [json.loads(b) for b in re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', page, re.S)]
    assert any(b.get("tokens", [None])[0] == PAY for b in blocks)


# ---------------------------------------------------------------------------
# every checked field: hostile or malformed values are refused in one line (CLI and Python API)
# ---------------------------------------------------------------------------
REFUSED = [
    # views.json: element names, keys, props, types, shapes
    ("element with code", mutate(views__json=setp([0, "element"], "AttentionHeads, {}); " + RUN + "; (")), "element must be one of"),
    ("element not ours", mutate(views__json=setp([0, "element"], "TextNeuronActivations")), "element must be one of"),
    ("element not text", mutate(views__json=setp([0, "element"], ["AttentionHeads"])), "element must be one of"),
    ("unknown view key", mutate(views__json=setp([0, "onload"], RUN)), "unknown key"),
    ("unknown prop", mutate(views__json=setp([0, "props", "dangerouslySetInnerHTML"], {"__html": PAY})), "unknown prop"),
    ("props not an object", mutate(views__json=setp([0, "props"], "{" + RUN + "}")), "'props', an object"),
    ("tokens not a list", mutate(views__json=setp([0, "props", "tokens"], PAY)), "must be a list of text"),
    ("token not text", mutate(views__json=setp([0, "props", "tokens"], [{"toString": RUN}, "b", "c"])), "must be text"),
    ("attention holds text", mutate(views__json=setp([0, "props", "attention", 0, 0, 0], RUN)), "numbers only"),
    ("attention holds bool", mutate(views__json=setp([0, "props", "attention", 0, 0, 0], True)), "numbers only"),
    ("attention ragged", mutate(views__json=setp([0, "props", "attention", 0, 0], [1, 2])), "rectangular"),
    ("attention 2-D", mutate(views__json=setp([0, "props", "attention"], [[1.0]])), "3-D"),
    ("attention of other tokens", mutate(views__json=setp([0, "props", "tokens"], ["a", "b"])), "tokens"),
    ("head names count", mutate(views__json=setp([0, "props", "attentionHeadNames"], ["h0"])), "head names"),
    ("mask not bool", mutate(views__json=setp([0, "props", "maskUpperTri"], "true")), "true or false"),
    ("values rows", mutate(views__json=setp([1, "props", "values"], [[1.0, 2.0]])), "rows"),
    ("labels count", mutate(views__json=setp([1, "props", "labels"], ["x"])), "labels"),
    ("title not text", mutate(views__json=setp([0, "title"], {"x": 1})), "must be text"),
    ("section not text", mutate(views__json=setp([0, "section"], 3)), "text 'section'"),
    ("views not a list", mutate(views__json=lambda v: {"views": v}), "list of views"),
    ("views not JSON", mutate(views__json=lambda v: "[{" + RUN), "not valid JSON"),
    # summary.json
    ("summary not an object", mutate(summary__json=lambda s: [PAY]), "object of settings"),
    ("summary text not text", mutate(summary__json=setp(["text"], ["a"])), "'text' must be text"),
    ("summary too deep", mutate(summary__json=setp(["x"], [[[[[1]]]]])), "small list or object"),
    ("summary key with control", mutate(summary__json=setp(["a\x00b"], 1)), "setting name"),
    # analysis.csv
    ("site with markup", mutate(analysis__csv=col("site", "<b>V</b>")), "must hold names"),
    ("measure with $", mutate(analysis__csv=col("measure", "$\\frac{$")), "must hold names"),
    ("target with script", mutate(analysis__csv=col("target", PAY)), "must hold names"),
    ("layer negative", mutate(analysis__csv=col("layer", -1)), "whole numbers"),
    ("layer fraction", mutate(analysis__csv=col("layer", 0.5)), "whole numbers"),
    ("layer infinite", mutate(analysis__csv=col("layer", "inf")), "whole numbers"),
    ("layer huge", mutate(analysis__csv=col("layer", 1e300)), "whole numbers"),
    ("head text", mutate(analysis__csv=col("head", "x")), "non-number"),
    ("value text", mutate(analysis__csv=col("value", PAY)), "non-number"),
    ("extension junk", mutate(analysis__csv=col("extension", "maybe")), "True or False"),
    ("site empty", mutate(analysis__csv=col("site", "")), "is empty"),
    ("control character", mutate(analysis__csv=col("detail", "a\x1b[31mb")), "control characters"),
    ("analysis not UTF-8", mutate(analysis__csv=lambda r: b"checkpoint,layer\n\xff\xfe,1\n"), "not UTF-8"),
    ("analysis missing column", mutate(analysis__csv=lambda r: [{k: v for k, v in x.items() if k != "measure"} for x in r]),
     "lacks columns measure"),
    # associations.csv
    ("rank empty", mutate(associations__csv=col("rank", "")), "rank"),
    ("rank zero", mutate(associations__csv=col("rank", 0)), "rank"),
    ("rank repeated", mutate(associations__csv=col("rank", 2)), "repeats token"),
    ("association value text", mutate(associations__csv=col("value", "high")), "non-number"),
    # attention_scales.csv
    ("scale layer empty", mutate(attention_scales__csv=col("layer", "")), "empty cell"),
    ("scale head negative", mutate(attention_scales__csv=col("head", -2)), "whole numbers"),
    # monitor.jsonl
    ("monitor name with $", mutate(monitor__jsonl=lambda m: [{**m[0], "similarity": {"$\\q$": 0.5}}]), "map names"),
    ("monitor name markup", mutate(monitor__jsonl=lambda m: [{**m[0], "similarity": {PAY: 0.5}}]), "map names"),
    ("monitor value text", mutate(monitor__jsonl=lambda m: [{**m[0], "explained": {"W_O": "0.5"}}]), "numbers or null"),
    ("monitor value inf", mutate(monitor__jsonl=lambda m: "{\"step\": 1, \"similarity\": {\"W_O\": Infinity}}\n"),
     "numbers or null"),
    ("monitor step bool", mutate(monitor__jsonl=lambda m: [{**m[0], "step": True}]), "integer 'step'"),
    ("monitor step negative", mutate(monitor__jsonl=lambda m: [{**m[0], "step": -3}]), "integer 'step'"),
    ("monitor junk line", mutate(monitor__jsonl=lambda m: json.dumps(m[0]) + "\n<script>\n" + json.dumps(m[1]) + "\n"),
     "not a JSON record"),
]


@pytest.mark.parametrize("name,files,fragment", REFUSED, ids=[c[0] for c in REFUSED])
def test_checked_fields_refuse_hostile_values(tmp_path, name, files, fragment):
    res = write_folder(tmp_path / "res", files())
    rc, err = run(["report", "--results", res, "--out", tmp_path / "r.html"])
    lines = err.strip().splitlines()
    assert rc == 2 and lines and lines[-1].startswith("error: ") and fragment in lines[-1], err
    assert "Traceback" not in err and not any(l.startswith("error:") for l in lines[:-1])
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "r_plots").exists()
    with pytest.raises(LeadTermError) as e:
        build_report(res, tmp_path / "api.html")
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "api.html").exists()


def test_a_torn_last_monitor_line_is_still_skipped(tmp_path):
    f = base_files()
    f["monitor.jsonl"] = "".join(json.dumps(r) + "\n" for r in f["monitor.jsonl"]) + '{"step": 3, "simil'
    res = write_folder(tmp_path / "res", f)
    assert build_report(res, tmp_path / "r.html").is_file()


def test_words_that_look_like_missing_values_stay_words(tmp_path):
    """A token 'nan', 'null' or 'NA' is a word, not a missing value."""
    f = base_files()
    for r, w in zip(f["associations.csv"], ("nan", "null", "NA", "None")):
        r["associate"] = w
    res = write_folder(tmp_path / "res", f)
    page = build_report(res, tmp_path / "r.html").read_text(encoding="utf-8")
    for cell in ("'nan' (1)", "'null' (0.5)", "'NA' (1)", "'None' (0.5)"):
        assert cell in page


# ---------------------------------------------------------------------------
# the Python API: a view's element, id and props never become code
# ---------------------------------------------------------------------------
API = [
    ("element with code", lambda: CVView("AttentionHeads, {}); alert(1); (", {}).fragment(), "component name"),
    ("element with dot", lambda: CVView("x.constructor", {}).fragment(), "component name"),
    ("id with quote", lambda: CVView("AttentionHeads", {}, id='x");alert(1);("').fragment(), "view id"),
    ("explicit id with markup", lambda: CVView("AttentionHeads", {}).fragment(id="<b>"), "view id"),
    ("props not a dict", lambda: CVView("AttentionHeads", "alert(1)").fragment(), "props must be a dict"),
    ("from_json element", lambda: CVView.from_json({"element": "eval", "props": {}}), "element must be one of"),
]


@pytest.mark.parametrize("name,call,fragment", API, ids=[c[0] for c in API])
def test_view_api_refuses_code(name, call, fragment):
    with pytest.raises(LeadTermError, match=re.escape(fragment)):
        call()


@pytest.mark.parametrize("obj", [PAY, {"a": [PAY, "</SCRIPT >", "<!--", "\u2028\u2029", "&amp;"]}, ["</script", 1.5, None]])
def test_script_json_is_inert_and_exact(obj):
    s = script_json(obj)
    assert "<" not in s and ">" not in s and "&" not in s and "\u2028" not in s and "\u2029" not in s
    assert json.loads(s) == obj


def test_non_finite_props_become_null():
    v = CVView("ColoredTokensMulti", {"tokens": ["a"], "values": np.array([[np.nan, np.inf]]), "labels": ["x", "y"]})
    block = re.search(r'<script type="application/json"[^>]*>(.*?)</script>', v.fragment(), re.S).group(1)
    assert json.loads(block)["values"] == [[None, None]]
    assert json.loads(json.dumps(v.to_json()))["props"]["values"] == [[None, None]]


# ---------------------------------------------------------------------------
# plot labels are text, not mathtext; non-finite values never set a limit
# ---------------------------------------------------------------------------
def _tbl(values, checkpoints=("step1", "step2"), site="V", measure="explained", heads=(None,)):
    return pd.DataFrame([dict(checkpoint=c, layer=l, head=np.nan if h is None else h, site=site, measure=measure, value=v)
                         for c in checkpoints for l in (0, 1) for h in heads for v in values])


def _plots_cases():
    from tl_leadterm import plots
    nan, inf = float("nan"), float("inf")
    dollar = ("$\\frac{$", "a$b$\\q")
    ser = lambda vals, names=("W_O",): pd.DataFrame([dict(step=s, series=n, value=v) for n in names for s, v in enumerate(vals, 1)])
    return [
        ("bars +inf", lambda p: plots.explained_bars(_tbl([inf]), p)),
        ("bars -inf", lambda p: plots.explained_bars(_tbl([-inf]), p)),
        ("bars nan", lambda p: plots.explained_bars(_tbl([nan]), p)),
        ("bars $ checkpoint", lambda p: plots.explained_bars(_tbl([0.5], checkpoints=dollar), p)),
        ("bars $ title", lambda p: plots.explained_bars(_tbl([0.5]), p, title="$\\undefined{$")),
        ("heatmap inf", lambda p: plots.checkpoint_heatmap(_tbl([inf]), p, measure="explained", site="V")),
        ("heatmap all nan", lambda p: plots.checkpoint_heatmap(_tbl([nan]), p, measure="explained", site="V")),
        ("heatmap $ checkpoints", lambda p: plots.checkpoint_heatmap(_tbl([0.5], checkpoints=dollar), p, measure="explained", site="V")),
        ("heatmap $ measure", lambda p: plots.checkpoint_heatmap(_tbl([0.5], measure="m$\\x$"), p, measure="m$\\x$", site="V")),
        ("head grid inf", lambda p: plots.head_grid(_tbl([inf], heads=(0, 1)), p, site="V")),
        ("head grid -inf and inf in one cell", lambda p: plots.head_grid(_tbl([-inf, inf], heads=(0, 1)), p, site="V",
                                                                         measure="explained")),
        ("head grid $ checkpoint", lambda p: plots.head_grid(_tbl([0.3], heads=(0,), checkpoints=dollar), p, site="V")),
        ("lines inf", lambda p: plots.similarity_vs_step(ser([0.1, inf, -inf]), p)),
        ("lines all nan", lambda p: plots.similarity_vs_step(ser([nan, nan]), p)),
        ("lines $ series", lambda p: plots.similarity_vs_step(ser([0.1, 0.2], names=dollar), p, title="$\\q$", ylabel="$x")),
        ("lines infinite step", lambda p: plots.similarity_vs_step(pd.DataFrame(dict(step=[1.0, inf], series="a", value=[0.1, 0.2])), p)),
        # huge finite values cannot set a limit either (matplotlib cannot lay out ticks near the float limit)
        ("lines 1e308", lambda p: plots.similarity_vs_step(ser([1e308, 1e308]), p)),
        ("lines ±1e308", lambda p: plots.similarity_vs_step(ser([0.1, 1e308, -1e308]), p)),
        ("lines huge step", lambda p: plots.similarity_vs_step(pd.DataFrame(dict(step=[1.0, 1e308], series="a", value=[0.1, 0.2])), p)),
        ("bars ±1e308", lambda p: plots.explained_bars(_tbl([1e308, -1e308]), p)),
        ("heatmap 1e308", lambda p: plots.checkpoint_heatmap(_tbl([1e308, 0.5], measure="coef"), p, measure="coef", site="V")),
        ("head grid -1e308", lambda p: plots.head_grid(_tbl([-1e308], heads=(0, 1), measure="coef"), p, site="V", measure="coef")),
        ("signed heatmap 1e308", lambda p: plots.signed_heatmap(_signed([1e308, -1e308, 0.2]), p, site="circuit_ov")),
        ("retention 1e308", lambda p: plots.retention_plot(_signed([1e308, -1e308, 0.2], heads=(None,)), p, site="circuit_ov")),
    ]


def _signed(values, heads=(0, 1)):
    """Signed-cosine rows at circuit_ov with a chance band, one checkpoint per value."""
    return pd.DataFrame([dict(checkpoint=f"step{i}", lens="weights", layer=0, head=np.nan if h is None else h,
                              site="circuit_ov", measure="signed_cosine", target="value_output", value=v,
                              percentile=1.0, null_q05=-0.1, null_q95=0.1)
                         for i, v in enumerate(values) for h in heads])


PLOTS = _plots_cases()


@pytest.mark.parametrize("name,fn", PLOTS, ids=[c[0] for c in PLOTS])
def test_plots_take_any_label_and_any_value(tmp_path, name, fn):
    import warnings

    import matplotlib.pyplot as plt
    n_figs = len(plt.get_fignums())
    for ext in (".png", ".svg"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")                       # no singular-limit or NaN warnings either
            out = fn(tmp_path / f"p{ext}")
        assert out.is_file() and out.stat().st_size > 0, name
    assert len(plt.get_fignums()) == n_figs                    # every figure closed


def test_plain_keeps_every_character():
    from tl_leadterm.plots import plain
    from matplotlib.text import Text
    for s in ("a$b$c", "$\\frac{$", "\\$", "$$", "no dollar"):
        t = Text(0, 0, plain(s))
        assert t._preprocess_math(t.get_text()) == (s, False)    # shown as written, never parsed as math


def test_report_of_dollar_labels_and_infinite_values(tmp_path):
    f = base_files()
    f["analysis.csv"] = [{**r, "checkpoint": r["checkpoint"] + "$\\frac{$", "value": float("inf") if i % 3 == 0 else r["value"]}
                         for i, r in enumerate(f["analysis.csv"])]
    res = write_folder(tmp_path / "res", f)
    rc, err = run(["report", "--results", res, "--out", tmp_path / "r.html"])
    assert rc == 0, err
    assert "Traceback" not in err
    assert (tmp_path / "r_plots" / "analysis_heatmap_V.png").is_file()


@pytest.mark.parametrize("which", ["analysis", "monitor"])
def test_report_of_huge_finite_values(tmp_path, which):
    """±1e308 is finite, so the readers accept it; the plots leave it out of every limit (the report is written)."""
    f = base_files()
    if which == "analysis":
        f["analysis.csv"] = [{**r, "value": 1e308 if i % 2 else -1e308} for i, r in enumerate(f["analysis.csv"])]
    else:
        f["monitor.jsonl"] = [{**r, "similarity": {"W_O": 1e308 * (1 if i % 2 else -1)}} for i, r in enumerate(f["monitor.jsonl"])]
    res = write_folder(tmp_path / "res", f)
    rc, err = run(["report", "--results", res, "--out", tmp_path / "r.html"])
    assert rc == 0 and "Traceback" not in err, err
    assert (tmp_path / "r.html").is_file()


# ---------------------------------------------------------------------------
# headless Chromium: no script of a crafted folder runs
# ---------------------------------------------------------------------------
def _all_payload_folder(d: Path) -> Path:
    f = base_files()
    f["views.json"][0].update(title=PAY, caption=PAY, section="Attention " + PAY)
    f["views.json"][0]["props"]["tokens"] = [PAY, "</script><script>", "\u2028"]
    f["views.json"][0]["props"]["attentionHeadNames"] = [PAY, PAY]
    f["views.json"][1]["props"]["labels"] = [PAY, "<!--"]
    f["views.json"][1]["props"]["tokens"] = [PAY, "<img src=x onerror=alert(1)>"]
    f["views.json"][1].update(title=PAY, caption=PAY, section=PAY)
    f["summary.json"] = {"text": PAY, **{p: PAY for p in PAYLOADS}, "nested": {PAYLOADS[2]: [PAY]}}
    f["analysis.csv"] = [{**r, "checkpoint": r["checkpoint"] + PAY, "detail": PAY} for r in f["analysis.csv"]]
    f["associations.csv"] = [{**r, "token": PAY, "source": r["source"] + PAY, "associate": PAY + str(r["rank"]),
                              "description": PAY} for r in f["associations.csv"]]
    f["attention_scales.csv"] = [{**r, "model": PAY} for r in f["attention_scales.csv"]]
    return write_folder(d, f)


@pytest.mark.browser
def test_crafted_folder_runs_no_script_in_chromium(tmp_path):
    from test_report import _chromium, _load

    if not _chromium():
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    res = _all_payload_folder(tmp_path / "res")
    rc, err = run(["report", "--results", res, "--out", tmp_path / "r.html", "--title", PAY])
    assert rc == 0, err
    page = tmp_path / "r.html"
    assert MARK not in page.read_text(encoding="utf-8")          # the marker exists only if a payload runs
    dom, errors, _ = _load(page)
    assert MARK not in dom, "a script from the results folder ran"
    assert errors == [], errors
    divs = re.findall(r'<div class="cv-view" id="([^"]+)" data-element="([^"]+)">(.*?)</div>', dom, re.S)
    assert len(divs) == 2 and all(inner.strip().startswith("<div") for _, _, inner in divs)   # the views still render


@pytest.mark.browser
def test_the_browser_check_can_fail(tmp_path):
    """Negative control: the same payload, put into the page the way the old report did, is caught."""
    from test_report import _chromium, _load

    if not _chromium():
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    res = write_folder(tmp_path / "res", base_files())
    page = build_report(res, tmp_path / "r.html")
    s = page.read_text(encoding="utf-8")
    # the old fragment: CircuitsVis.render("id", CircuitsVis.<element from the file>, <props>)
    old = s.replace("CircuitsVis.AttentionHeads,", f"CircuitsVis.AttentionHeads, {{}}); {RUN}; (0,", 1)
    page.write_text(old, encoding="utf-8")
    dom, _, _ = _load(page)
    assert MARK in dom

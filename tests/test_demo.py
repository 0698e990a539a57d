"""``tl-leadterm demo`` end to end (small settings) and ``tl-leadterm report``."""

import contextlib
import io
import json
import os
import re

import pandas as pd
import pytest

from tl_leadterm.cli import main


@pytest.fixture(scope="module")
def demo(shared_data, tmp_path_factory):
    """One small demo run shared by the tests below: (output folder, what it printed)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["demo", "--out", str(out), "--steps", "4", "--seq-len", "8", "--batch-size", "32", "--lr", "1.0",
                   "--neox-steps", "4", "--pythia-tokenizer", str(shared_data / "gpt-neox-20b-tokenizer.json")])
    assert rc == 0
    return out, buf.getvalue()


def test_demo_prints_the_report_path(demo):
    out, printed = demo
    assert f"report: {out / 'report.html'}" in printed


def test_demo_writes_every_output(demo):
    out, _ = demo
    for name in ("analysis.csv", "model_analysis.csv", "neox_analysis.csv", "neox_head_ranking.csv", "neox_retention.csv",
                 "neox_associations.csv",
                 "associations.csv", "views.json", "summary.json",
                 "basis.safetensors", "toy.safetensors", "monitor.jsonl", "attention_scales.csv",
                 "plots/analysis_similarity_vs_step.png", "plots/monitor_similarity.png"):
        assert (out / name).is_file(), name


def test_demo_report_is_offline_with_one_bundle(demo):
    out, _ = demo
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("var CircuitsVis=") == 1
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html)
    assert html.count('class="cv-view"') == len(json.loads((out / "views.json").read_text()))


def test_demo_analyses_each_checkpoint(demo):
    out, _ = demo
    df = pd.read_csv(out / "analysis.csv")
    assert set(df.checkpoint) == {"step1", "step2", "step4"}
    assert {"checkpoint", "layer", "head", "site", "measure", "value"} <= set(df.columns)


def test_demo_views_cover_toy_pythia_and_explorer(demo):
    out, _ = demo
    sections = {v["section"] for v in json.loads((out / "views.json").read_text())}
    assert {"Attention: toy model", "Attention: Pythia-architecture model", "Association explorer",
            "Attention: trained GPT-NeoX", "Beyond the leading term: trained GPT-NeoX",
            "Association explorer: trained GPT-NeoX"} <= sections
    scales = pd.read_csv(out / "attention_scales.csv")
    assert len(scales) == 2 + 2 * 4 + 2 * 4 and scales["fit_residual"].notna().all()  # toy 2x1, GPT-NeoX 2x4, Pythia 2x4


def test_demo_trains_a_gpt_neox_and_sweeps_it_beyond_the_leading_term(demo):
    """The real-architecture model is analysed as deeply as the toy: per head, per site, per checkpoint."""
    out, _ = demo
    df = pd.read_csv(out / "neox_analysis.csv")
    assert list(dict.fromkeys(df.checkpoint)) == ["step0", "step1", "step2", "step4"]      # Pythia's schedule up to 4
    per_head = df[df.extension & df["head"].notna()]
    assert set(per_head.site) >= {"key_query", "circuit_qk", "circuit_ov", "circuit_ov_embed"}
    assert {"coef", "explained", "signed_cosine", "residual_norm", "residual_rel_norm", "residual_pair",
            "residual_sv"} <= set(per_head.measure)
    ex = per_head[per_head.measure == "explained"].value
    assert ex.between(0, 1).all() and ex.notna().all()
    sc = per_head[per_head.measure == "signed_cosine"]
    assert sc.percentile.between(0, 1).all() and (sc.null_q05 <= sc.null_q95).all()
    assert set(df.lens) == {"weights", "update", "gradient"} and set(df[df.lens == "update"].reference) == {"step0"}
    rank = pd.read_csv(out / "neox_head_ranking.csv")
    # (4 weights + 3 update + 1 gradient checkpoints) x sites x layers x heads
    assert len(rank) == (4 + 3 + 1) * 4 * 2 * 4 and set(rank["rank"]) == set(range(1, 9))
    assert {"above_chance", "anti_aligned", "percentile"} <= set(rank.columns)
    assoc = pd.read_csv(out / "neox_associations.csv")
    assert {"learned circuit_ov L0", "residual circuit_ov L1", "learned circuit_qk L1"} <= set(assoc.source)


def test_demo_report_has_the_real_model_section(demo):
    out, _ = demo
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Trained GPT-NeoX model (neox_analysis.csv)" in html and "Beyond the leading term: Trained GPT-NeoX model" in html
    assert "Heads ranked per site" in html
    assert "Findings: Trained GPT-NeoX model" in html and "How to read these numbers" in html
    # the findings are stated at the top: before any view, table section or per-model section
    assert html.index(">Findings</h2>") < html.index('class="cv-view"')
    assert html.index(">Findings</h2>") < html.index(">Trained GPT-NeoX model (neox_analysis.csv)</h2>")
    # only heads that stand out from chance are featured, the same ones in the summary and the residual tables
    from tl_leadterm.analysis import summary
    from tl_leadterm.analysis.findings import featured
    from tl_leadterm.results import read_table

    df = read_table(out / "neox_analysis.csv")
    picks = featured(df[df.lens == "weights"], "circuit_ov")
    ov = summary(df).set_index(["lens", "site"]).loc[("weights", "circuit_ov")]
    assert [f"L{int(r.layer)}H{int(r['head'])}" for w, r in picks if w == "best"] == (
        [ov.best] if ov.best.startswith("L") else [])
    for what, r in picks:
        assert f"the {what} OV head L{int(r.layer)}H{int(r['head'])} at {r.checkpoint}" in html
    if not picks:
        assert "No OV head stands out" in html
    import re
    assert set(re.findall(r"OV head (L\d+H\d+)", html)) == {f"L{int(r.layer)}H{int(r['head'])}" for _, r in picks}
    assert (out / "plots" / "neox_analysis_signed_circuit_ov.png").is_file()
    assert (out / "plots" / "neox_analysis_retention_weights_circuit_ov.png").is_file()


@pytest.mark.browser
def test_demo_report_renders_in_chromium(demo):
    from test_report import _chromium, _load, _uncaught
    if not _chromium():
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    out, _ = demo
    dom, errors, stderr = _load(out / "report.html")
    assert errors == [] and _uncaught(stderr) == []
    divs = re.findall(r'<div class="cv-view" id="([^"]+)" data-element="([^"]+)">(.*?)</div>', dom, re.S)
    assert len(divs) == len(json.loads((out / "views.json").read_text()))
    for vid, element, inner in divs:
        assert inner.strip().startswith("<div"), f"view {vid} ({element}) rendered nothing"


def test_report_command_rebuilds_the_report(demo, tmp_path):
    out, _ = demo
    n_views = len(json.loads((out / "views.json").read_text()))
    rep = tmp_path / "again" / "r.html"
    assert main(["report", "--results", str(out), "--out", str(rep)]) == 0
    again = rep.read_text(encoding="utf-8")
    assert again.count("var CircuitsVis=") == 1 and again.count('class="cv-view"') == n_views
    assert "Fitted attention scales" in again


def test_report_adds_live_views_of_a_saved_model(demo, tmp_path):
    out, _ = demo
    n_views = len(json.loads((out / "views.json").read_text()))
    rep = tmp_path / "live.html"
    assert main(["report", "--results", str(out), "--out", str(rep), "--model", f"toy:{out}",
                 "--basis", str(out / "basis.safetensors"), "--text", "the bird flew", "--tokens", "fish"]) == 0
    live = rep.read_text(encoding="utf-8")
    assert live.count("var CircuitsVis=") == 1 and live.count('class="cv-view"') == n_views + 2 + 1


def test_report_model_needs_basis_and_text(demo, tmp_path, capsys):
    out, _ = demo
    assert main(["report", "--results", str(out), "--out", str(tmp_path / "r.html"), "--model", f"toy:{out}"]) == 2
    assert "--model needs --basis and --text" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_demo_as_a_library_call(tmp_path):
    """The pipeline lives in the library: run_demo(DemoConfig) is what the command runs; bad settings name the field."""
    from tl_leadterm import LeadTermError
    from tl_leadterm.pipeline import DemoConfig, run_demo
    with pytest.raises(LeadTermError, match="^steps must be >= 1"):
        run_demo(DemoConfig(out=tmp_path / "x", steps=0), progress=False)
    assert not (tmp_path / "x").exists()
    res = run_demo(DemoConfig(out=tmp_path / "d", steps=2, seq_len=8, batch_size=32, no_pythia=True, neox_steps=2),
                   progress=False)
    assert res.report == tmp_path / "d" / "report.html" and res.report.is_file()
    assert "skipped (--no-pythia)" in res.summary["notes"]
    # no Pythia tokenizer needed: the real-architecture section uses the word tokenizer saved as a Hugging Face one
    assert (tmp_path / "d" / "neox_analysis.csv").is_file() and "Beyond the leading term" in res.report.read_text()


def test_demo_unwritable_out_fails_before_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["demo", "--out", str(blocker / "sub"), "--steps", "2", "--no-pythia"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: cannot write to") and err.count("\n") == 1
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        assert main(["demo", "--out", str(ro / "x"), "--no-pythia"]) == 2


def test_report_bad_input(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "r.html")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["report", "--results", str(tmp_path), "--out", str(tmp_path / "r.txt")]) == 2
    assert "should end in .html" in capsys.readouterr().err
    assert main(["report", "--results", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "nothing to report" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_demo_bad_options_fail_fast(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "a"), "--pythia-tokenizer", str(tmp_path / "nope.json")]) == 2
    assert "--pythia-tokenizer" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(["demo", "--out", str(tmp_path / "b"), "--steps", "0"]) == 2
    assert main(["demo", "--out", str(tmp_path / "c"), "--tokens", "zebra", "--no-pythia"]) == 2
    err = capsys.readouterr().err
    assert "'zebra' is not one of the basis" in err and not (tmp_path / "c" / "toy.safetensors").exists()

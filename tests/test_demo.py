"""``tl-leadterm demo`` end to end (small settings) and ``tl-leadterm report``."""

import json
import os
import re

import pandas as pd
import pytest

from tl_leadterm.cli import main


def test_demo_end_to_end_then_report(tmp_path, capsys, shared_data):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--steps", "4", "--seq-len", "8", "--batch-size", "32", "--lr", "1.0",
               "--pythia-tokenizer", str(shared_data / "gpt-neox-20b-tokenizer.json")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("var CircuitsVis=") == 1
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html)
    for name in ("analysis.csv", "model_analysis.csv", "associations.csv", "views.json", "summary.json",
                 "basis.safetensors", "toy.safetensors"):
        assert (out / name).is_file(), name
    df = pd.read_csv(out / "analysis.csv")
    assert set(df.checkpoint) == {"step1", "step2", "step4"}
    assert {"checkpoint", "layer", "head", "site", "measure", "value"} <= set(df.columns)
    views = json.loads((out / "views.json").read_text())
    sections = {v["section"] for v in views}
    assert {"Attention: toy model", "Attention: Pythia-architecture model", "Association explorer"} <= sections
    assert html.count('class="cv-view"') == len(views)
    assert (out / "plots" / "analysis_similarity_vs_step.png").is_file()
    try:
        import tl_leadterm.monitor  # noqa: F401
        assert (out / "monitor.jsonl").is_file() and (out / "plots" / "monitor_similarity.png").is_file()
    except ImportError:
        pass
    # the report command rebuilds the report from the saved results
    rep = tmp_path / "again" / "r.html"
    assert main(["report", "--results", str(out), "--out", str(rep)]) == 0
    again = rep.read_text(encoding="utf-8")
    assert again.count("var CircuitsVis=") == 1 and again.count('class="cv-view"') == len(views)
    assert "Fitted attention scales" in again
    scales = pd.read_csv(out / "attention_scales.csv")
    assert len(scales) == 2 + 2 * 4 and scales["fit_residual"].notna().all()  # toy: 2 layers x 1 head; Pythia: 2 x 4
    # live views from a saved model and basis
    rep2 = tmp_path / "live.html"
    assert main(["report", "--results", str(out), "--out", str(rep2), "--model", f"toy:{out}",
                 "--basis", str(out / "basis.safetensors"), "--text", "the bird flew", "--tokens", "fish"]) == 0
    live = rep2.read_text(encoding="utf-8")
    assert live.count("var CircuitsVis=") == 1 and live.count('class="cv-view"') == len(views) + 2 + 1
    assert main(["report", "--results", str(out), "--out", str(rep2), "--model", f"toy:{out}"]) == 2
    assert "--model needs --basis and --text" in capsys.readouterr().err


def test_demo_unwritable_out_fails_before_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["demo", "--out", str(blocker / "sub"), "--steps", "2", "--no-pythia"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: cannot write to output folder") and err.count("\n") == 1
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

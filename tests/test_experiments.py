"""The paper's experiments (demos/) in their smallest configuration, and the monitor benchmark's toy loop."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod


SMALL = ["--corpus", "builtin:stories", "--max-docs", "40", "--word-vocab-size", "40", "--seq-len", "8",
         "--layers", "3", "--epochs", "2", "--batch-size", "16", "--lr", "0.3"]


def test_claim_verdict_on_planted_similarities():
    exp = load(ROOT / "demos" / "toy_experiment.py")
    v = exp.claim_verdict({"W_O": 0.8, "V.0": 0.7, "W.0": None, "P.0": -0.9}, 0.7)
    assert v == {"W_O": True, "V.0": False, "W.0": False, "P.0": False}


def test_toy_experiment_small_writes_its_outputs(tmp_path):
    exp = load(ROOT / "demos" / "toy_experiment.py")
    s = exp.main(SMALL + ["--out", str(tmp_path)])
    recs = [json.loads(x) for x in (tmp_path / "monitor.jsonl").read_text().splitlines()]
    spe = s["settings"]["steps_per_epoch"]
    assert [r["step"] for r in recs] == [0, spe, 2 * spe]
    assert set(recs[-1]["similarity"]) == {f"{w}/L{l}" for w in "WVP" for l in range(3)} | {"W_O"}
    csv = (tmp_path / "similarity.csv").read_text().splitlines()
    assert csv[0].startswith("epoch,step,loss,W_O") and len(csv) == 4
    assert (tmp_path / "similarity.png").stat().st_size > 1000


def test_toy_experiment_verdict_follows_the_threshold(tmp_path):
    """Every cosine lies in [-1, 1]: below -2 all defined similarities hold, above 2 none does."""
    exp = load(ROOT / "demos" / "toy_experiment.py")
    low = exp.main(SMALL + ["--threshold", "-2", "--out", str(tmp_path / "low")])
    high = exp.main(SMALL + ["--threshold", "2", "--out", str(tmp_path / "high")])
    assert low["claim_holds"] == {k: v is not None for k, v in low["final_similarity"].items()}
    assert low["claim_holds_all"] == all(v is not None for v in low["final_similarity"].values())
    assert not any(high["claim_holds"].values()) and not high["claim_holds_all"]


def test_pythia_schedule():
    exp = load(ROOT / "demos" / "pythia_experiment.py")
    assert exp.pythia_steps(512) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert exp.pythia_steps(3000) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000]
    assert exp.pythia_steps(5) == [0, 1, 2, 4]


def test_bench_monitor_toy_loop_runs():
    bench = load(ROOT / "benchmarks" / "bench_monitor.py")
    r = bench.bench_toy(steps=4, every=2, ab=False, vocab=50, max_docs=30)
    assert r["logged"] == 2 and r["monitor_s"] > 0 and math.isfinite(r["overhead"])

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


def test_toy_experiment_small(tmp_path):
    exp = load(ROOT / "demos" / "toy_experiment.py")
    s = exp.main(["--corpus", "builtin:stories", "--max-docs", "40", "--word-vocab-size", "40", "--seq-len", "8",
                  "--layers", "3", "--epochs", "2", "--batch-size", "16", "--lr", "0.3", "--out", str(tmp_path)])
    recs = [json.loads(x) for x in (tmp_path / "monitor.jsonl").read_text().splitlines()]
    spe = s["settings"]["steps_per_epoch"]
    assert [r["step"] for r in recs] == [0, spe, 2 * spe]
    assert set(recs[-1]["similarity"]) == {f"{w}.{l}" for w in "WVP" for l in range(3)} | {"W_O"}
    assert s["claim_holds"] == {k: (v is not None and v > 0.7) for k, v in recs[-1]["similarity"].items()}
    assert s["claim_holds_all"] == all(s["claim_holds"].values())
    csv = (tmp_path / "similarity.csv").read_text().splitlines()
    assert csv[0].startswith("epoch,step,loss,W_O") and len(csv) == 4
    assert (tmp_path / "similarity.png").stat().st_size > 1000


def test_pythia_schedule():
    exp = load(ROOT / "demos" / "pythia_experiment.py")
    assert exp.pythia_steps(512) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert exp.pythia_steps(3000) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000]
    assert exp.pythia_steps(5) == [0, 1, 2, 4]


def test_bench_monitor_toy_loop_runs():
    bench = load(ROOT / "benchmarks" / "bench_monitor.py")
    r = bench.bench_toy(steps=4, every=2, ab=False, vocab=50, max_docs=30)
    assert r["logged"] == 2 and r["monitor_s"] > 0 and math.isfinite(r["overhead"])

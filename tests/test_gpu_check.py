"""benchmarks/gpu_check.sh --smoke: every section of the GPU readiness check runs on the CPU at tiny shapes
(the same code paths as on a GPU: basis on a token stream, torchrun with gloo, every lens, the monitor)
and prints its figure line; a failing section is reported and the others still run."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), "--smoke", *map(str, args)], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "figures.json"
    r = _run("--json", out)
    return r, out


@pytest.mark.slow
def test_smoke_exits_0_and_prints_every_figure(smoke):
    r, _ = smoke
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-4000:]
    assert "Traceback" not in text
    assert re.search(r"^FIGURE basis: k=64 T=16 .* tokens/s .* peak RSS .* finite=True$", r.stdout, re.M)
    assert re.search(r"^FIGURE torchrun: k=64 .* torchrun 2 x gloo vs one process: max abs difference .*"
                     r"same token ids=True", r.stdout, re.M)
    for lens in ("weights", "update", "gradient"):
        assert re.search(rf"^FIGURE analysis: lens={lens} k=64 2 layers x 4 heads d_model 32 null_draws=10: [\d.]+ s$",
                         r.stdout, re.M), lens
    assert re.search(r"^FIGURE analysis: update/weights [\d.]+x, gradient/weights [\d.]+x", r.stdout, re.M)
    assert re.search(r"^FIGURE monitor: GPT-NeoX 2 layers d_model 32 on cpu, 3 steps .* ms/step .* 3 records", r.stdout, re.M)
    for name in ("basis", "torchrun", "analysis", "monitor"):
        assert re.search(rf"^  {name} +ok ", r.stdout, re.M), name
    assert "within budget" in r.stdout


@pytest.mark.slow
def test_smoke_figures_json(smoke):
    r, out = smoke
    assert r.returncode == 0
    data = json.loads(out.read_text())
    assert data["within_budget"] is True
    res = data["results"]
    assert [res[n]["status"] for n in ("basis", "torchrun", "analysis", "monitor")] == ["ok"] * 4
    tr = res["torchrun"]["figures"][0]
    assert tr["same_ids"] is True and tr["max_abs_diff"] <= 1e-12 * tr["max_abs"]
    assert {f["k"] for f in res["basis"]["figures"]} == {32, 64}
    assert all(f["finite"] and f["tokens_per_s"] > 0 for f in res["basis"]["figures"])
    lenses = [f["lens"] for f in res["analysis"]["figures"] if "lens" in f]
    assert lenses == ["weights", "update", "gradient"]
    assert res["monitor"]["figures"][0]["records"] == 3


def test_a_failing_section_is_reported_and_the_rest_still_run(tmp_path):
    """A section that cannot work (an analysis k above the vocabulary) fails with one clear line; the next runs."""
    r = _run("--sections", "analysis,basis", "--analysis-k", 100000, "--basis-runs", "16:merge-other", timeout=300)
    assert r.returncode == 1, r.stdout[-3000:]
    assert re.search(r"^== analysis: FAILED \(exit 1\) in [\d.]+ s -- ERROR analysis: LeadTermError: .*top_k", r.stdout, re.M), r.stdout[-3000:]
    assert re.search(r"^FIGURE basis: k=16 ", r.stdout, re.M)
    assert re.search(r"^  basis +ok ", r.stdout, re.M)


def test_bad_section_name_is_refused():
    r = _run("--sections", "basis,nope", timeout=120)
    assert r.returncode == 2
    assert "error: unknown section 'nope'" in r.stdout

"""The self-contained HTML report: one bundle, no external URL, offline rendering in headless Chromium."""

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tl_leadterm import LeadTermError, compute_basis, load_corpus
from tl_leadterm.report import Report, build_report
from tl_leadterm.toy import ToyConfig, ToyTransformer, train_toy
from tl_leadterm import visual

BUNDLE_MARK = "var CircuitsVis="
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


@pytest.fixture(scope="module")
def toy_setup():
    w = load_corpus("builtin:stories", seq_len=8)[:300]
    b = compute_basis(w, top_k=w.vocab_size, progress=False)
    m = ToyTransformer(ToyConfig(w.vocab_size, 8, 2), tokenizer=w.tokenizer)
    train_toy(m, w, lr=1.0, steps=3, progress=False)
    return w, b, m


@pytest.fixture(scope="module")
def report_html(toy_setup, tmp_path_factory):
    w, b, m = toy_setup
    small = compute_basis(w, top_k=12, progress=False)
    comp = visual.compare_attention(m, small, "sue saw a bird . the bird flew")
    df = visual.associations(b, ["bird"], model=m, top=4)
    rep = Report("test report")
    rep.heading("Attention")
    for v in comp.views():
        rep.view(v)
    rep.heading("Explorer")
    rep.view(visual.association_view(df, "bird"))
    rep.table(visual.association_table(df, "bird"), caption="bird <script>alert(1)</script>")
    d = tmp_path_factory.mktemp("rep")
    png = d / "p.png"
    from tl_leadterm import plots
    plots.explained_bars(pd.DataFrame([dict(checkpoint="s", layer=0, head=np.nan, site="V", measure="explained", value=0.5)]), png)
    rep.image(png, "a plot")
    return rep.save(d / "report.html"), rep.n_views


def test_bundle_once_no_external_urls(report_html):
    path, n_views = report_html
    s = path.read_text(encoding="utf-8")
    assert n_views == 3
    assert s.count(BUNDLE_MARK) == 1                       # the circuitsvis bundle, inlined once
    assert s.count("CircuitsVis.render(") == n_views + s.split("<body>")[0].count("CircuitsVis.render(")
    assert len(re.findall(r'<div class="cv-view" id="', s)) == n_views
    assert not EXTERNAL.search(s), EXTERNAL.search(s).group(0) if EXTERNAL.search(s) else ""
    assert "sourceMappingURL" not in s
    assert 'src="data:image/png;base64,' in s
    assert "<script>alert(1)" not in s                      # captions are escaped
    import circuitsvis
    bundle = (Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js").read_text(encoding="utf-8")
    assert bundle.splitlines()[0][:2000] in s               # it is the package's own bundle


def test_external_url_check_can_fail():
    assert EXTERNAL.search('<script src="https://unpkg.com/x.js"></script>')
    assert EXTERNAL.search("<link href='//cdn.example/x.css'>")
    assert not EXTERNAL.search('<img src="data:image/png;base64,AAA">')


def test_view_json_round_trip(toy_setup):
    w, b, m = toy_setup
    v = visual.compare_attention(m, b, "the bird flew").view(0)
    v2 = visual.CVView.from_json(json.loads(json.dumps(v.to_json())))
    assert v2.element == v.element and v2.props["tokens"] == v.props["tokens"]
    assert np.allclose(np.asarray(v2.props["attention"]), np.asarray(v.props["attention"]))
    assert v.to_html().count(BUNDLE_MARK) == 1


def test_build_report_from_results(tmp_path):
    rows = []
    for c in ("step1", "step2", "step8"):
        for l in range(2):
            for site in ("V", "W", "P"):
                for m in ("cosine_leading", "explained", "residual_rel_norm"):
                    rows.append(dict(checkpoint=c, layer=l, head=np.nan, site=site, measure=m, value=0.5 + 0.1 * l, target="", detail="", extension=False))
    res = tmp_path / "res"
    res.mkdir()
    pd.DataFrame(rows).to_csv(res / "analysis.csv", index=False)
    (res / "monitor.jsonl").write_text("\n".join(json.dumps({"step": s, "similarity": {"W_O": 1 - 0.01 * s, "V.0": 0.9}}) for s in (1, 2, 3)))
    out = build_report(res, tmp_path / "r" / "report.html")
    s = out.read_text(encoding="utf-8")
    assert s.count("data:image/png;base64,") >= 5 and BUNDLE_MARK not in s  # no views: no bundle needed
    assert (tmp_path / "r" / "plots" / "analysis_heatmap_W.svg").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LeadTermError, match="nothing to report"):
        build_report(empty, tmp_path / "x.html")
    with pytest.raises(LeadTermError, match="not found"):
        build_report(tmp_path / "missing", tmp_path / "x.html")
    (empty / "analysis.csv").write_text("a,b\n1,2\n")
    with pytest.raises(LeadTermError, match="lacks columns"):
        build_report(empty, tmp_path / "x.html")


# ---------------------------------------------------------------------------
# headless Chromium (Debian's chromium), offline
# ---------------------------------------------------------------------------
CATCHER = """<script>window.__errors=[];
(function(){var oe=console.error;console.error=function(){window.__errors.push(Array.from(arguments).join(' '));oe.apply(console,arguments)};
window.addEventListener('error',function(e){window.__errors.push('error: '+(e.message||e.type))},true);
window.addEventListener('unhandledrejection',function(e){window.__errors.push('rejection: '+e.reason)});
window.addEventListener('load',function(){setTimeout(function(){var p=document.createElement('pre');p.id='js-errors';
p.textContent=JSON.stringify(window.__errors);document.body.appendChild(p)},1500)})})();</script>"""


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run_chromium(page: Path, *extra: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as prof:
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={prof}", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=6000", *extra, page.as_uri()]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _load(page: Path) -> tuple[str, list, str]:
    """(DOM after scripts ran, errors caught in the page, chromium's stderr)."""
    s = page.read_text(encoding="utf-8")
    probe = page.with_name(page.stem + ".probe.html")
    probe.write_text(s.replace("<head>", "<head>" + CATCHER, 1), encoding="utf-8")
    r = _run_chromium(probe, "--dump-dom")
    m = re.search(r'<pre id="js-errors">(.*?)</pre>', r.stdout, re.S)
    assert m, f"the page did not finish loading in chromium: {r.stderr[-2000:]}"
    import html as _html
    return r.stdout, json.loads(_html.unescape(m.group(1))), r.stderr


def _uncaught(stderr: str) -> list[str]:
    return [l for l in stderr.splitlines() if "CONSOLE" in l and ("Uncaught" in l or "Error" in l.split('"', 1)[-1][:40])]


@pytest.mark.browser
def test_error_detection_works(tmp_path):
    """Negative control: the same harness reports a page with a script error."""
    if not _chromium():
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    bad = tmp_path / "bad.html"
    bad.write_text("<html><head></head><body><p>x</p><script>console.error('boom');nope();</script></body></html>")
    _, errors, stderr = _load(bad)
    assert any("boom" in e for e in errors) and any("nope" in e for e in errors)
    assert _uncaught(stderr)


@pytest.mark.browser
def test_report_renders_offline_in_chromium(report_html, tmp_path):
    if not _chromium():
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    path, n_views = report_html
    dom, errors, stderr = _load(path)
    assert errors == [], errors
    assert _uncaught(stderr) == []
    # every view's div was filled by CircuitsVis
    divs = re.findall(r'<div class="cv-view" id="([^"]+)" data-element="([^"]+)">(.*?)</div>', dom, re.S)
    assert len(divs) == n_views
    for vid, element, inner in divs:
        assert inner.strip().startswith("<div"), f"view {vid} ({element}) rendered nothing"
    assert "Head Selector" in dom  # the AttentionHeads component's own text
    shot = tmp_path / "shot.png"
    r = _run_chromium(path, "--window-size=1200,1600", f"--screenshot={shot}")
    assert shot.is_file(), r.stderr[-2000:]
    import matplotlib.image
    img = matplotlib.image.imread(str(shot))[..., :3]
    assert img.std() > 0.05                                    # not blank
    assert (img.reshape(-1, 3).round(2) != 1.0).any(axis=1).mean() > 0.05  # >5% non-white pixels

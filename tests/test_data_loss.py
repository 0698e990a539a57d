"""Nothing lost: a command replaces only what it owns, output paths that cannot be right are refused in one line,
a commit killed midway is undone by the next run, ``--out .`` and paths without a folder work, and a full disk
(ENOSPC) anywhere is one line with nothing changed."""

import builtins
import contextlib
import errno
import hashlib
import io
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tl_leadterm import LeadTermError
from tl_leadterm import io as tio
from tl_leadterm.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_security import base_files, write_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXT = "the bird flew up. the fish swam down. a bird sang.\n<|endoftext|>\nthe car drove by. the bus drove on.\n" * 20
SWEEP = tio.OWNS["sweep"]


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder`` (hidden ones included) with its bytes' hash."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def run(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue()


def one_line_error(rc: int, err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and lines and lines[-1].startswith("error: ") and fragment in lines[-1], err
    assert "Traceback" not in err and not any(l.startswith("error:") for l in lines[:-1]), err


def hidden(folder: Path) -> list[str]:
    """Temporary entries of this package's naming left in ``folder``."""
    return [p.name for p in folder.iterdir() if tio._TMP.match(p.name)] if folder.is_dir() else []


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    d = tmp_path_factory.mktemp("dl")
    (d / "c.txt").write_text(TEXT)
    assert run(["basis", "--corpus", d / "c.txt", "--seq-len", 8, "--top-k", 10, "--out", d / "b.safetensors"])[0] == 0
    assert run(["toy-train", "--corpus", d / "c.txt", "--seq-len", 8, "--layers", 1, "--lr", 0.5, "--steps", 2,
                "--batch-size", 4, "--seed", 0, "--log-every", 1, "--out", d / "run"])[0] == 0
    write_folder(d / "res", base_files())
    (d / "afile").write_text("a file, not a folder")
    (d / "afolder.html").mkdir()
    (d / "afolder").mkdir()
    return d


def toy_argv(ws, out, *extra):
    return ["toy-train", "--corpus", ws / "c.txt", "--seq-len", 8, "--layers", 1, "--lr", 0.5, "--steps", 1,
            "--batch-size", 4, "--seed", 0, "--log-every", 1, *extra, "--out", out]


# ---------------------------------------------------------------------------
# a command replaces only the files it owns, inside folders it owns
# ---------------------------------------------------------------------------
def test_report_leaves_the_plots_folder_of_the_user_alone(ws, tmp_path):
    d = tmp_path / "d"
    (d / "plots").mkdir(parents=True)
    (d / "plots" / "mine.txt").write_text("my notes")
    (d / "plots" / "analysis_explained.png").write_bytes(b"my own figure of that name")
    (d / "report_plots").mkdir()
    (d / "report_plots" / "mine.txt").write_text("a user's file in the report's plots folder: kept")
    (d / "report_plots" / "stale.png").write_bytes(b"from an older report")
    (d / "report_plots" / ".tl_leadterm-report.json").write_text('{"files": ["stale.png"]}')   # what it wrote: replaced
    (d / "keep.txt").write_text("mine too")
    before_plots = snapshot(d / "plots")
    rc, err = run(["report", "--results", ws / "res", "--out", d / "report.html"])
    assert rc == 0, err
    assert snapshot(d / "plots") == before_plots and (d / "keep.txt").read_text() == "mine too"
    assert (d / "report_plots" / "analysis_explained.png").is_file() and not (d / "report_plots" / "stale.png").exists()
    assert (d / "report_plots" / "mine.txt").read_text().startswith("a user's file")
    first = snapshot(d)
    assert run(["report", "--results", ws / "res", "--out", d / "report.html"])[0] == 0
    assert snapshot(d) == first and hidden(d) == [] and hidden(tmp_path) == []


def test_report_never_deletes_a_users_plots_folder_or_files(ws, tmp_path):
    """``report --out r.html`` beside a user's own ``r_plots/``: the folder and its files stay; a user file that has
    the name of one of the report's plots is refused in one line, nothing changed."""
    (tmp_path / "r_plots").mkdir()
    (tmp_path / "r_plots" / "mine.txt").write_text("user")
    rc, err = run(["report", "--results", ws / "res", "--out", tmp_path / "r.html"])
    assert rc == 0, err
    assert (tmp_path / "r_plots" / "mine.txt").read_text() == "user" and (tmp_path / "r.html").is_file()
    d = tmp_path / "two"
    (d / "r_plots").mkdir(parents=True)
    (d / "r_plots" / "analysis_explained.png").write_bytes(b"my own figure")
    before = snapshot(d)
    rc, err = run(["report", "--results", ws / "res", "--out", d / "r.html"])
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 2 and len(lines) == 1 and "was not written by a report" in lines[0], err
    assert snapshot(d) == before and hidden(d) == []


def test_two_reports_in_one_folder_keep_their_own_plots(ws, tmp_path):
    for name in ("a.html", "b.html"):
        assert run(["report", "--results", ws / "res", "--out", tmp_path / name])[0] == 0
    assert (tmp_path / "a_plots").is_dir() and (tmp_path / "b_plots").is_dir() and (tmp_path / "a.html").is_file()


def test_build_report_writes_only_its_named_plots(ws, tmp_path):
    from tl_leadterm.report import build_report
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "mine.txt").write_text("x")
    build_report(ws / "res", tmp_path / "r.html")
    assert (tmp_path / "plots" / "mine.txt").read_text() == "x" and (tmp_path / "plots" / "analysis_explained.png").is_file()
    build_report(ws / "res", tmp_path / "s.html", plots_dir=tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "analysis_explained.png").is_file()


# ---------------------------------------------------------------------------
# output paths that are folders where a file is needed, or files where a folder is needed
# ---------------------------------------------------------------------------
def _an(ws, out):
    return ["analyze", "--model", f"toy:{ws / 'run'}", "--basis", ws / "b.safetensors", "--out", out]


def _sw(ws, out):
    return ["sweep", "--checkpoints", f"toy:{ws / 'run'}", "--basis", ws / "b.safetensors", "--out", out]


def _demo(out):
    return ["demo", "--out", out, "--steps", 1, "--seq-len", 8, "--neox-steps", 0, "--no-pythia"]


OUT_CASES = [
    ("report into an existing folder", lambda w: ["report", "--results", w / "res", "--out", w / "afolder"], "is a folder"),
    ("report into a folder named .html", lambda w: ["report", "--results", w / "res", "--out", w / "afolder.html"], "is a folder"),
    ("report to a path ending in /", lambda w: ["report", "--results", w / "res", "--out", f"{w / 'new.html'}/"], "is a folder"),
    ("report to /dev/null", lambda w: ["report", "--results", w / "res", "--out", "/dev/null"], "should end in .html"),
    ("report under a file", lambda w: ["report", "--results", w / "res", "--out", w / "afile" / "r.html"], "is a file, not a folder"),
    ("report whose plots folder is a file", lambda w: ["report", "--results", w / "res", "--out", w / "afile.html"]
     if (w / "afile_plots").write_text("x") or True else [], "is a file or a link"),
    ("report results /dev/null", lambda w: ["report", "--results", "/dev/null", "--out", w / "n.html"], "device or other special"),
    ("report results a file", lambda w: ["report", "--results", w / "afile", "--out", w / "n.html"], "is a file, not a folder"),
    ("report results missing", lambda w: ["report", "--results", w / "nope", "--out", w / "n.html"], "not found"),
    ("toy-train into a file", lambda w: toy_argv(w, w / "afile"), "is a file, not a folder"),
    ("toy-train under a file", lambda w: toy_argv(w, w / "afile" / "sub"), "is a file, not a folder"),
    ("toy-train into /dev/null", lambda w: toy_argv(w, "/dev/null"), "device or other special file"),
    ("analyze into a file", lambda w: _an(w, w / "afile"), "is a file, not a folder"),
    ("analyze into /dev/null", lambda w: _an(w, "/dev/null"), "device or other special file"),
    ("sweep into a file", lambda w: _sw(w, w / "afile"), "is a file, not a folder"),
    ("sweep under a file", lambda w: _sw(w, w / "afile" / "x"), "is a file, not a folder"),
    ("demo into a file", lambda w: _demo(w / "afile"), "is a file, not a folder"),
    ("demo into /dev/null", lambda w: _demo("/dev/null"), "device or other special file"),
]


@pytest.mark.parametrize("name,argv,fragment", OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_bad_output_paths_are_one_line(ws, name, argv, fragment):
    args = argv(ws)
    before = snapshot(ws)
    rc, err = run(args)
    one_line_error(rc, err, fragment)
    assert snapshot(ws) == before                       # nothing written, replaced or moved


def _api_out_cases(ws):
    from tl_leadterm.report import build_report
    return [
        ("build_report into a folder", lambda: build_report(ws / "res", ws / "afolder"), "is a folder"),
        ("build_report of /dev/null", lambda: build_report("/dev/null", ws / "n.html"), "device or other special"),
        ("build_report of a file", lambda: build_report(ws / "afile", ws / "n.html"), "is a file, not a folder"),
        ("atomic write into a folder", lambda: tio.write_text_atomic(ws / "afolder", "x"), "is a folder"),
        ("atomic write to a device", lambda: tio.write_text_atomic("/dev/null", "x"), "device or other special"),
        ("atomic write under a file", lambda: tio.write_text_atomic(ws / "afile" / "x.txt", "x"), "is a file, not a folder"),
        ("staged folder that is a file", lambda: tio.staged_dir(ws / "afile", SWEEP).__enter__(), "is a file, not a folder"),
        ("staged folder under a file", lambda: tio.staged_dir(ws / "afile" / "x", SWEEP).__enter__(), "is a file, not a folder"),
        ("staged folder /dev/null", lambda: tio.staged_dir("/dev/null", SWEEP).__enter__(), "device or other special"),
    ]


def test_bad_output_paths_python_api(ws):
    before = snapshot(ws)
    for name, call, fragment in _api_out_cases(ws):
        with pytest.raises(LeadTermError) as e:
            call()
        assert fragment in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
    assert snapshot(ws) == before


# ---------------------------------------------------------------------------
# --out . and paths without a folder
# ---------------------------------------------------------------------------
NO_PARENT = [
    ("toy-train --out .", lambda w: toy_argv(w, "."), ["toy.safetensors", "train.json"]),
    ("toy-train --out ./", lambda w: toy_argv(w, "./"), ["toy.safetensors"]),
    ("toy-train --out run", lambda w: toy_argv(w, "run"), ["run/toy.safetensors"]),
    ("analyze --out .", lambda w: _an(w, "."), ["analysis.csv"]),
    ("sweep --out .", lambda w: _sw(w, "."), ["analysis.csv"]),
    ("demo --out .", lambda w: _demo("."), ["report.html", "plots/analysis_explained.png"]),
    ("report --out report.html", lambda w: ["report", "--results", w / "res", "--out", "report.html"],
     ["report.html", "report_plots/analysis_explained.png"]),
    ("report --out ./r.html", lambda w: ["report", "--results", w / "res", "--out", "./r.html"], ["r.html"]),
    ("report --results . --out report.html", lambda w: ["report", "--results", ".", "--out", "report.html"], ["report.html"]),
    ("basis --out b.safetensors", lambda w: ["basis", "--corpus", w / "c.txt", "--seq-len", 8, "--top-k", 5, "--out",
                                             "b.safetensors"], ["b.safetensors"]),
]


@pytest.mark.parametrize("name,argv,made", NO_PARENT, ids=[c[0] for c in NO_PARENT])
def test_paths_without_a_parent_folder(ws, tmp_path, monkeypatch, name, argv, made):
    cwd = tmp_path / "here"
    cwd.mkdir()
    if "--results ." in name:
        write_folder(cwd, base_files())
    (cwd / "mine.txt").write_text("mine")
    monkeypatch.chdir(cwd)
    for _ in range(2):                                  # a second run replaces the first, staged inside the folder
        rc, err = run(argv(ws))
        assert rc == 0 and "Traceback" not in err, err
        for m in made:
            assert (cwd / m).is_file(), m
        assert (cwd / "mine.txt").read_text() == "mine"
        assert hidden(cwd) == [] and hidden(tmp_path) == [] and hidden(cwd / "run") == []


# ---------------------------------------------------------------------------
# a commit killed midway: the next run restores (or keeps) the previous complete results
# ---------------------------------------------------------------------------
def _commit(out: Path, new: dict, key=None, owns=SWEEP) -> None:
    with tio.staged_dir(out, owns, key=key) as stage:
        for name, text in new.items():
            (stage / name).write_text(text)


def _count_replaces(tmp_path, layout) -> int:
    out, owns, key, old, new = layout(tmp_path / "count")
    n = 0
    real = os.replace

    def counting(a, b):
        nonlocal n
        n += 1
        return real(a, b)

    os.replace = counting
    try:
        _commit(out, new, key, owns)
    finally:
        os.replace = real
    return n


def _killed_commit(out, new, key, owns, k: int) -> int:
    """Run the commit in a child process that SIGKILLs itself just before its k-th rename; the child's wait status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            n = 0
            real = os.replace

            def killer(a, b):
                nonlocal n
                n += 1
                if n == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(a, b)

            os.replace = killer
            _commit(out, new, key, owns)
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


def _layout_inside(base: Path):
    """An existing results folder: old results of the command, a file of the user's."""
    out = base / "res"
    out.mkdir(parents=True)
    old = {"analysis.csv": "old csv", "analysis.json": "old json", "head_ranking.csv": "old ranking"}
    for n, t in old.items():
        (out / n).write_text(t)
    (out / "notes.txt").write_text("the user's")
    return out, SWEEP, None, old, {"analysis.csv": "new csv", "analysis.json": "new json"}


def _layout_beside(base: Path):
    """No folder yet: the commit creates it."""
    base.mkdir(parents=True, exist_ok=True)
    return base / "res", SWEEP, None, {}, {"analysis.csv": "new csv", "analysis.json": "new json"}


def _layout_report(base: Path):
    """report --out DIR/r.html: it stages inside DIR under the file's name and owns r.html and r_plots/."""
    out = base / "dir"
    (out / "r_plots").mkdir(parents=True)
    (out / "r_plots" / "a.png").write_text("old plot")
    (out / "r.html").write_text("old report")
    (out / "other.html").write_text("the user's")
    return out, {"r.html", "r_plots"}, "r.html", {"r.html": "old report"}, {"r.html": "new report"}


LAYOUTS = {"inside": _layout_inside, "beside": _layout_beside, "report": _layout_report}


def _kill_cases():
    import tempfile
    cases = []
    with tempfile.TemporaryDirectory() as t:
        for lname, layout in LAYOUTS.items():
            n = _count_replaces(Path(t) / lname, layout)
            cases += [(lname, k) for k in range(1, n + 2)]    # each rename, and after the last one
    return cases


KILLS = _kill_cases()


@pytest.mark.parametrize("layout,k", KILLS, ids=[f"{l}-kill-at-rename-{k}" for l, k in KILLS])
def test_a_killed_commit_is_undone_by_the_next_run(tmp_path, layout, k):
    out, owns, key, old, new = LAYOUTS[layout](tmp_path)
    before = snapshot(out)
    status = _killed_commit(out, new, key, owns, k)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert killed or os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    broken = {k: v for k, v in snapshot(out).items() if not tio._TMP.match(k.split("/")[0])} != before
    # the previous complete results are not lost: each old file is in the folder or in the backup, unchanged
    for name, text in old.items():
        where = [out / name] + [p / name for p in (list(out.iterdir()) if out.is_dir() else []) + list(tmp_path.iterdir())
                                if tio._TMP.match(p.name) and p.name.endswith(".old")]
        assert any(p.is_file() and p.read_text() == text for p in where) or not killed, (name, where)
    # a failing next run (it fails inside its staged block) leaves the previous results, complete
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(LeadTermError, match="boom"):
            with tio.staged_dir(out, owns, key=key):
                raise LeadTermError("boom")
    said = [str(w.message) for w in caught if "put back" in str(w.message)]
    assert len(said) == (1 if killed and broken else 0), said      # said when, and only when, something was undone
    if killed:
        assert snapshot(out) == before
    else:                                              # the commit had finished: its results are the previous ones
        assert {n: (out / n).read_text() for n in new} == new
    assert hidden(out) == [] and hidden(tmp_path) == []
    # and a succeeding run replaces them as usual
    _commit(out, {n: t + " 2" for n, t in new.items()}, key, owns)
    assert {n: (out / n).read_text() for n in new} == {n: t + " 2" for n, t in new.items()}
    assert hidden(out) == [] and hidden(tmp_path) == []
    if layout == "inside":
        assert (out / "notes.txt").read_text() == "the user's" and not (out / "head_ranking.csv").exists()
    if layout == "report":
        assert (out / "other.html").read_text() == "the user's" and not (out / "r_plots").exists()


def test_a_killed_commit_is_undone_by_a_failing_run_of_the_same_command(ws, tmp_path):
    """The CLI end to end: toy-train killed between the renames of its commit; then a toy-train that fails up front
    keeps the backup, and one that fails while it runs puts the previous results back."""
    out = tmp_path / "t"
    assert run(toy_argv(ws, out))[0] == 0
    before = snapshot(out)
    # renames of the commit: 1 journal, 2-4 old files out, 5 journal, 6.. new files in; killed after one is in
    code = ("import os, signal, sys\n"
            "import tl_leadterm.io as tio\n"
            "state = {'on': False, 'n': 0}\nreal, commit = os.replace, tio._commit\n"
            "def committing(*a, **k):\n"
            "    state['on'] = True\n"
            "    return commit(*a, **k)\n"
            "def killer(a, b):\n"
            "    if state['on']:\n"
            "        state['n'] += 1\n"
            "        if state['n'] == 7: os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return real(a, b)\n"
            "os.replace, tio._commit = killer, committing\n"
            "from tl_leadterm.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    args = [str(a) for a in toy_argv(ws, out, "--steps", 2)]
    p = subprocess.run([sys.executable, "-c", code, *args], cwd=str(ROOT), capture_output=True, text=True,
                       env={**os.environ, "TQDM_DISABLE": "1"}, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert snapshot(out) != before                                     # it was killed midway
    rc, err = run(toy_argv(ws, out, "--lr", -1))                       # fails up front: the backup stays
    assert rc == 2 and [p for p in hidden(tmp_path) + hidden(out) if p.endswith(".old")]
    with pytest.warns(UserWarning, match="the previous results were put back"):
        rc, err = run(toy_argv(ws, out, "--lr", 1e50, "--steps", 5))  # fails while it runs: the previous results are back
    assert rc == 2, err
    assert snapshot(out) == before and hidden(out) == [] and hidden(tmp_path) == []


# ---------------------------------------------------------------------------
# a full disk anywhere: one line, nothing changed
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def disk_full_under(root: Path):
    """Every open for writing of a path under ``root`` fails with ENOSPC, as on a full disk."""
    real = builtins.open
    root = str(root)

    def full_open(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)).startswith(root) \
                and any(c in mode for c in "wax+"):
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(file))
        return real(file, mode, *a, **k)

    builtins.open = io.open = full_open
    try:
        yield
    finally:
        builtins.open = io.open = real


FULL_CLI = [
    ("basis", lambda w, o: ["basis", "--corpus", w / "c.txt", "--seq-len", 8, "--top-k", 5, "--out", o / "b.safetensors"]),
    ("toy-train", lambda w, o: toy_argv(w, o / "t")),
    ("analyze", lambda w, o: _an(w, o / "a")),
    ("sweep", lambda w, o: _sw(w, o / "s")),
    ("report", lambda w, o: ["report", "--results", w / "res", "--out", o / "r.html"]),
    ("demo", lambda w, o: _demo(o / "d")),
]


@pytest.mark.parametrize("name,argv", FULL_CLI, ids=[c[0] for c in FULL_CLI])
def test_a_full_disk_is_one_line(ws, tmp_path, name, argv):
    o = tmp_path / "o"
    o.mkdir()
    (o / "keep.txt").write_text("x")
    before, before_ws = snapshot(o), snapshot(ws)
    with disk_full_under(o):
        rc, err = run(argv(ws, o))
    one_line_error(rc, err.lower(), "no space left")
    assert snapshot(o) == before and snapshot(ws) == before_ws and hidden(o) == []


def test_a_full_disk_in_the_python_api(ws, tmp_path):
    import pandas as pd

    from tl_leadterm import plots
    from tl_leadterm.basis import Basis
    from tl_leadterm.report import build_report
    o = tmp_path / "o"
    o.mkdir()
    (o / "r.html").write_text("old")
    b = Basis.load(ws / "b.safetensors")
    df = pd.DataFrame([dict(checkpoint="s", layer=0, head=float("nan"), site="V", measure="explained", value=0.5)])
    calls = [
        ("write_text_atomic", lambda: tio.write_text_atomic(o / "r.html", "new")),
        ("write_json_atomic", lambda: tio.write_json_atomic(o / "x.json", {"a": 1})),
        ("Basis.save", lambda: b.save(o / "b.safetensors")),
        ("plot png", lambda: plots.explained_bars(df, o / "p.png")),
        ("plot svg", lambda: plots.explained_bars(df, o / "p.svg")),
        ("build_report", lambda: build_report(ws / "res", o / "r.html")),
        ("staged folder", lambda: _commit(o / "res", {"analysis.csv": "x"})),
    ]
    before = snapshot(o)
    for name, call in calls:
        with disk_full_under(o), pytest.raises(LeadTermError) as e:
            call()
        assert "no space left" in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
        assert snapshot(o) == before and hidden(o) == [], name


def test_a_full_disk_outside_the_helpers_is_still_one_line(monkeypatch, tmp_path):
    from tl_leadterm.commands import visual

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(visual, "report_outputs", full)
    one_line_error(*run(["report", "--results", tmp_path, "--out", tmp_path / "r.html"]), "no space left")

"""``tl-leadterm demo`` (the main job) and ``tl-leadterm report`` (a report from saved results)."""

from __future__ import annotations

from pathlib import Path

from ..config import DemoConfig, add_arguments, comma_list, from_args
from ..config import tokens as check_tokens
from ..errors import require
from ..io import check_writable_dir, staged_dir


def register(sub) -> None:
    d = sub.add_parser("demo", help="the main job: basis, toy model, analysis and an HTML report on the embedded corpus",
                       description="Run the whole pipeline on the embedded corpus (builtin:stories): the basis, a toy model "
                                   "trained briefly (logged by the training monitor), the analysis at several checkpoints, "
                                   "attention views, the association explorer, plots, and DIR/report.html.")
    add_arguments(d, DemoConfig)
    d.set_defaults(func=run_demo)

    r = sub.add_parser("report", help="build the self-contained HTML report from saved results",
                       description="Build one self-contained HTML file from results folders written by 'demo', 'analyze', "
                                   "'sweep' or 'toy-train --log-every' (analysis.csv, model_analysis.csv, monitor.jsonl, "
                                   "associations.csv, views.json, summary.json). Optionally add live attention views and "
                                   "associations from a model and a basis.")
    r.add_argument("--results", required=True, nargs="+", metavar="DIR", help="results folder(s)")
    r.add_argument("--out", required=True, metavar="FILE.html",
                   help="output HTML file, self-contained; its plots also go to NAME_plots/ beside it (e.g. "
                        "report.html: report_plots/): a new report replaces the plots an earlier one wrote there (listed "
                        "in NAME_plots/.tl_leadterm-report.json) and leaves every other file alone")
    r.add_argument("--title", default="tl_leadterm report")
    r.add_argument("--model", default=None, metavar="MODEL", help="also show attention views of this model (toy:PATH, local dir, hub name)")
    r.add_argument("--basis", default=None, metavar="FILE", help="basis file for --model / --tokens")
    r.add_argument("--text", default=None, help="text for the attention views of --model")
    r.add_argument("--tokens", default=None, metavar="LIST", help="comma-separated tokens for the association explorer (needs --basis)")
    r.set_defaults(func=run_report)


def _tokens_list(s: str) -> list[str]:
    """``report --tokens``: a comma list of distinct tokens (checked as the demo's ``tokens``)."""
    toks = comma_list(s)
    check_tokens("tokens", toks)
    return list(toks)


def run_demo(args) -> int:
    from ..pipeline import run_demo as run

    result = run(from_args(DemoConfig, args))
    print(f"report: {result.report}  ({result.seconds}s)")
    return 0


def report_outputs(out: str) -> tuple[Path, str, str]:
    """(folder, file name, plots folder name) of ``report --out``, or a one-line error: it must name an .html file
    (not a folder, not a device) in a folder that exists or can be created."""
    p = Path(out)
    require(not str(out).endswith(("/", "\\")) and not p.is_dir(),
            f"--out {out} is a folder; give the path of an .html file, e.g. {Path(out) / 'report.html'}")
    require(p.suffix.lower() in (".html", ".htm") and p.stem not in ("", ".", ".."),
            f"--out {out} should end in .html, e.g. report.html")
    require(not p.exists() or p.is_file(), f"--out {out} is a device or other special file; give the path of an .html file")
    folder = p.parent
    check_writable_dir(folder)
    plots = f"{p.stem}_plots"
    require(not (folder / plots).exists() or (folder / plots).is_dir() and not (folder / plots).is_symlink(),
            f"{folder / plots} (where the report writes its plots) is a file or a link, not a folder; move it away or "
            "choose another --out name")
    return folder, p.name, plots


def run_report(args) -> int:
    from ..report import check_results_dir

    out = Path(args.out)
    folder, name, plots = report_outputs(args.out)
    for d in args.results:
        check_results_dir(d)
    require(args.model is None or (args.basis and args.text),
            "--model needs --basis and --text (the attention views compare the model with the basis on that text)")
    require(args.tokens is None or args.basis, "--tokens needs --basis")
    extra = []
    basis = None
    if args.basis:
        from ..basis import Basis
        basis = Basis.load(args.basis)
    model = None
    if args.model:
        from ..models import load_model
        from ..visual import compare_attention
        model = load_model(args.model)
        comp = compare_attention(model, basis, args.text)
        extra += [(f"Attention: {model.name}", v) for v in comp.views()]
    if args.tokens:
        from ..visual import association_view, associations
        assoc = associations(basis, _tokens_list(args.tokens), model=model)
        extra += [("Association explorer", association_view(assoc, t)) for t in dict.fromkeys(assoc["token"])]
    from ..report import build_report
    model_path = args.model[4:] if args.model and args.model.startswith("toy:") else args.model
    inputs = [*args.results, args.basis, model_path]
    with staged_dir(folder, {name}, inputs=inputs, key=name) as stage:
        build_report(args.results, stage / name, title=args.title, extra_views=extra, plots_dir=stage / plots)
        commit_plots(stage / plots, folder / plots, inputs, key=name)
    print(f"report: {out}")
    return 0


#: the list of the files a report wrote into its plots folder (what the next report of that name may replace)
PLOTS_MANIFEST = ".tl_leadterm-report.json"


def commit_plots(built: Path, plots: Path, inputs, key: str) -> None:
    """Put the plots of a report (``built``) into its plots folder ``plots`` (a staged commit, file by file): the
    files the previous report listed in :data:`PLOTS_MANIFEST` are replaced or removed, every other file stays;
    a new plot whose name is taken by a file the report did not write is refused in one line, nothing changed."""
    import json
    import shutil

    from ..io import write_json_atomic

    new = sorted(p.name for p in built.iterdir()) if built.is_dir() else []
    old: list = []
    try:
        rec = json.loads((plots / PLOTS_MANIFEST).read_text(encoding="utf-8"))
        old = [n for n in rec.get("files", []) if isinstance(n, str) and "/" not in n and n not in ("", ".", "..")]
    except (OSError, ValueError, AttributeError):
        pass
    taken = [n for n in new if n not in old and ((plots / n).exists() or (plots / n).is_symlink())]
    require(not taken, f"{plots / taken[0]} was not written by a report (it is not in {PLOTS_MANIFEST}), and this report "
                       "writes a plot of that name; move it away or choose another --out name" if taken else "")
    if new or old:
        with staged_dir(plots, {*new, *old, PLOTS_MANIFEST}, inputs=inputs, key=key) as stage:
            for n in new:
                (built / n).replace(stage / n)
            write_json_atomic(stage / PLOTS_MANIFEST, {"files": new})
    shutil.rmtree(built, ignore_errors=True)      # emptied: the report's own folder in its staging area

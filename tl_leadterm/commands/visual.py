"""``tl-leadterm demo`` (the main job) and ``tl-leadterm report`` (a report from saved results)."""

from __future__ import annotations

from pathlib import Path

from ..errors import require
from ..io import check_writable_dir, staged_dir
from ..pipeline import DEMO_TEXT, DEMO_TOKENS, DemoConfig


def register(sub) -> None:
    d = sub.add_parser("demo", help="the main job: basis, toy model, analysis and an HTML report on the embedded corpus",
                       description="Run the whole pipeline on the embedded corpus (builtin:stories): the basis, a toy model "
                                   "trained briefly (logged by the training monitor), the analysis at several checkpoints, "
                                   "attention views, the association explorer, plots, and DIR/report.html.")
    d.add_argument("--out", required=True, metavar="DIR", help="output folder (report.html, plots/, analysis.csv, ...)")
    d.add_argument("--seq-len", type=int, default=32, metavar="T", help="window length (default 32)")
    d.add_argument("--layers", type=int, default=2, metavar="L", help="toy-model layers (default 2)")
    d.add_argument("--steps", type=int, default=40, metavar="S", help="training steps (default 40)")
    d.add_argument("--lr", type=float, default=2.0, metavar="ETA", help="learning rate (default 2.0)")
    d.add_argument("--batch-size", type=int, default=128, metavar="B", help="windows per SGD step (default 128; 0 = full batch)")
    d.add_argument("--seed", type=int, default=0, metavar="N", help="seed (default 0)")
    d.add_argument("--text", default=DEMO_TEXT, help="text for the attention views")
    d.add_argument("--tokens", default=",".join(DEMO_TOKENS), metavar="LIST", help="comma-separated tokens for the explorer (default bird,fish,car)")
    d.add_argument("--pythia-tokenizer", default=None, metavar="FILE",
                   help="Pythia tokenizer.json for the Pythia-architecture section (random local model); default: "
                        "../shared/data/gpt-neox-20b-tokenizer.json beside the checkout, skipped if absent")
    d.add_argument("--no-pythia", action="store_true", help="skip the Pythia-architecture section")
    d.add_argument("--neox-steps", type=int, default=64, metavar="S",
                   help="train a GPT-NeoX (Pythia architecture, word tokenizer) from random init for S steps, checkpoints on "
                        "Pythia's schedule, and sweep them beyond the leading term (default 64; 0 skips)")
    d.set_defaults(func=run_demo)

    r = sub.add_parser("report", help="build the self-contained HTML report from saved results",
                       description="Build one self-contained HTML file from results folders written by 'demo', 'analyze', "
                                   "'sweep' or 'toy-train --log-every' (analysis.csv, model_analysis.csv, monitor.jsonl, "
                                   "associations.csv, views.json, summary.json). Optionally add live attention views and "
                                   "associations from a model and a basis.")
    r.add_argument("--results", required=True, nargs="+", metavar="DIR", help="results folder(s)")
    r.add_argument("--out", required=True, metavar="FILE.html", help="output HTML file (plots go to plots/ beside it)")
    r.add_argument("--title", default="tl_leadterm report")
    r.add_argument("--model", default=None, metavar="MODEL", help="also show attention views of this model (toy:PATH, local dir, hub name)")
    r.add_argument("--basis", default=None, metavar="FILE", help="basis file for --model / --tokens")
    r.add_argument("--text", default=None, help="text for the attention views of --model")
    r.add_argument("--tokens", default=None, metavar="LIST", help="comma-separated tokens for the association explorer (needs --basis)")
    r.set_defaults(func=run_report)


def _tokens_list(s: str) -> list[str]:
    toks = [t.strip() for t in s.split(",") if t.strip()]
    require(toks, "--tokens must list at least one token, e.g. bird,fish")
    return toks


def run_demo(args) -> int:
    from ..pipeline import run_demo as run

    cfg = DemoConfig(out=args.out, seq_len=args.seq_len, layers=args.layers, steps=args.steps, lr=args.lr,
                     batch_size=args.batch_size, seed=args.seed, text=args.text, tokens=tuple(_tokens_list(args.tokens)),
                     pythia_tokenizer=args.pythia_tokenizer, no_pythia=args.no_pythia, neox_steps=args.neox_steps)
    result = run(cfg)
    print(f"report: {result.report}  ({result.seconds}s)")
    return 0


def run_report(args) -> int:
    out = Path(args.out)
    require(out.suffix.lower() in (".html", ".htm"), f"--out {out} should end in .html")
    check_writable_dir(out.parent if str(out.parent) else ".")
    for d in args.results:
        require(Path(d).is_dir(), f"results folder {d} not found; give a folder written by 'tl-leadterm demo', 'analyze' or 'sweep'")
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
    with staged_dir(out.parent if str(out.parent) else ".", {out.name, "plots"},
                    inputs=[*args.results, args.basis, model_path]) as stage:
        build_report(args.results, stage / out.name, title=args.title, extra_views=extra)
    print(f"report: {out}")
    return 0

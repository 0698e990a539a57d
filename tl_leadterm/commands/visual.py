"""``tl-leadterm demo`` (the main job) and ``tl-leadterm report`` (a report from saved results)."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from ..errors import LeadTermError, require
from ..io import check_writable_dir, ensure_writable_dir, write_json_atomic, write_text_atomic

DEMO_TEXT = "sue saw a bird. the bird flew up in the sky. the big fish swam in the pond. dad drove the red car."
DEMO_TOKENS = ("bird", "fish", "car")
PYTHIA_TOKENIZER = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gpt-neox-20b-tokenizer.json"


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
    d.add_argument("--pythia-tokenizer", default=str(PYTHIA_TOKENIZER), metavar="FILE",
                   help="Pythia tokenizer.json for the Pythia-architecture section (random local model); skipped if absent")
    d.add_argument("--no-pythia", action="store_true", help="skip the Pythia-architecture section")
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


def _stage(bar, text: str) -> None:
    bar.set_description(text)
    bar.update(1)


def _tokens_list(s: str) -> list[str]:
    toks = [t.strip() for t in s.split(",") if t.strip()]
    require(toks, "--tokens must list at least one token, e.g. bird,fish")
    return toks


def run_demo(args) -> int:
    import torch
    from tqdm.auto import tqdm

    require(args.seq_len >= 2, f"--seq-len must be >= 2 (got {args.seq_len})")
    require(args.layers >= 1, f"--layers must be >= 1 (got {args.layers})")
    require(args.steps >= 1, f"--steps must be >= 1 (got {args.steps})")
    require(args.lr > 0, f"--lr must be positive (got {args.lr})")
    require(args.batch_size >= 0, f"--batch-size must be >= 0 (got {args.batch_size})")
    tokens = _tokens_list(args.tokens)
    require(args.text.strip(), "--text is empty; give a text for the attention views")
    require(args.no_pythia or Path(args.pythia_tokenizer).is_file() or args.pythia_tokenizer == str(PYTHIA_TOKENIZER),
            f"--pythia-tokenizer {args.pythia_tokenizer} not found; give the Pythia tokenizer.json or --no-pythia")
    out = ensure_writable_dir(args.out)  # before any work
    t_start = time.perf_counter()
    bar = tqdm(total=8, desc="demo", unit="stage")
    from ..basis import compute_basis
    from ..corpus import load_corpus
    from ..toy import ToyConfig, ToyTransformer, train_toy
    from .. import visual

    torch.manual_seed(args.seed)
    _stage(bar, "corpus")
    windows = load_corpus("builtin:stories", seq_len=args.seq_len)
    _stage(bar, "basis")
    basis = compute_basis(windows, top_k=windows.vocab_size)
    for tok in tokens:  # unknown explorer tokens fail now, not after training
        visual._resolve_token(basis, tok)
    basis.save(out / "basis.safetensors")

    _stage(bar, "toy training")
    model = ToyTransformer(ToyConfig(windows.vocab_size, args.seq_len, args.layers), tokenizer=windows.tokenizer)
    ckpt_steps = sorted({s for s in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if s < args.steps} | {args.steps})
    snapshots: dict[int, dict] = {}
    monitor, notes = None, []
    try:
        from ..monitor import TrainingMonitor
    except ImportError:
        TrainingMonitor = None
        notes.append("training monitor not installed: skipped")
    if TrainingMonitor is not None:
        every = max(1, args.steps // 20)
        monitor = TrainingMonitor(model, basis, out / "monitor.jsonl", every=every,
                                  lr=args.lr if args.batch_size == 0 else None)

    def callback(step, m, loss):
        if monitor is not None:
            monitor.callback(step, m, loss)
        if step in ckpt_steps:
            snapshots[step] = {k: v.detach().clone() for k, v in m.weights().items()}

    t0 = time.perf_counter()
    res = train_toy(model, windows, lr=args.lr, steps=args.steps, batch_size=args.batch_size or None, seed=args.seed,
                    callback=callback)
    t_train = time.perf_counter() - t0
    if monitor is not None:
        monitor.close()
    model.save(out / "toy.safetensors", lr=args.lr, steps=args.steps, batch_size=args.batch_size or "full", seed=args.seed)

    _stage(bar, "analysis")
    from ..compare import analyze_toy
    import pandas as pd
    frames = []
    for step in ckpt_steps:
        snap = ToyTransformer(ToyConfig(windows.vocab_size, args.seq_len, args.layers), tokenizer=windows.tokenizer)
        with torch.no_grad():
            for k, p in snap.weights().items():
                p.copy_(snapshots[step][k])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # W and P are still ~0 at the first steps: NaN cosines warn
            frames.append(analyze_toy(snap, basis, checkpoint=f"step{step}"))
    analysis = pd.concat(frames, ignore_index=True)
    from .analyze import write_table
    write_table(analysis, out, "analysis")

    _stage(bar, "attention views")
    views = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comp = visual.compare_attention(model, basis, args.text, name=f"toy model ({args.layers} layers, step {args.steps})")
    for w in caught:
        print(f"warning: {w.message}")
    for v in comp.views():
        views.append(("Attention: toy model", v))
    scale_tables = [comp.scale_table()]

    _stage(bar, "association explorer")
    assoc = visual.associations(basis, tokens, model=model, top=8)
    write_text_atomic(out / "associations.csv", assoc.to_csv(index=False))
    for tok in dict.fromkeys(assoc["token"]):
        views.append(("Association explorer", visual.association_view(assoc, tok)))

    _stage(bar, "Pythia-architecture model")
    try:
        pythia_note = _pythia_section(args, out, views, notes, scale_tables)
    except Exception as e:  # the real-model example must not sink the main job
        msg = f"Pythia-architecture section failed ({type(e).__name__}: {e}); the report shows the toy model only"
        print(f"warning: {msg}")
        notes.append(msg)
        pythia_note = "no Pythia-architecture section (it failed; see notes)"
    import pandas as pd
    write_text_atomic(out / "attention_scales.csv", pd.concat(scale_tables, ignore_index=True).to_csv(index=False))

    _stage(bar, "report")
    write_json_atomic(out / "views.json", [{**v.to_json(), "section": s} for s, v in views])
    summary = {
        "text": ("The whole tl_leadterm pipeline on the embedded corpus (builtin:stories): the basis of the corpus over "
                 "its full word vocabulary, the paper's attention-only toy model trained from zero with plain SGD, its "
                 "weights compared with their leading terms at several checkpoints, attention views, the association "
                 "explorer and " + pythia_note + "."),
        "corpus": f"builtin:stories, {windows.n_windows} windows of T={args.seq_len}, |V|={windows.vocab_size}",
        "toy model": f"{args.layers} layers, {args.steps} steps, lr={args.lr}, "
                     + (f"batch {args.batch_size} windows" if args.batch_size else "full batch") + f", seed {args.seed}",
        "loss": f"{res.losses[0]:.4f} -> {res.losses[-1]:.4f}",
        "training seconds": round(t_train, 1),
        "checkpoints analysed": ", ".join(f"step{s}" for s in ckpt_steps),
        "notes": "; ".join(notes) or "none",
    }
    write_json_atomic(out / "summary.json", summary)
    from ..report import build_report
    path = build_report(out, out / "report.html", title="tl_leadterm demo: gradient leading terms on the embedded corpus")
    summary["total seconds"] = round(time.perf_counter() - t_start, 1)
    write_json_atomic(out / "summary.json", summary)
    bar.close()
    print(f"report: {path}  ({summary['total seconds']}s)")
    return 0


def _pythia_section(args, out: Path, views: list, notes: list, scale_tables: list) -> str:
    """Random local Pythia-architecture model + Pythia-tokenized basis: attention views and analysis table."""
    if args.no_pythia:
        notes.append("Pythia-architecture section skipped (--no-pythia)")
        return "no Pythia-architecture section"
    tok = Path(args.pythia_tokenizer)
    if not tok.is_file():
        notes.append(f"Pythia tokenizer {tok} not found: Pythia-architecture section skipped")
        return "no Pythia-architecture section (tokenizer file not found)"
    import tempfile

    from ..basis import compute_basis
    from ..compare import analyze_model
    from ..corpus import load_corpus
    from ..models import load_model, save_random_pythia
    from ..visual import compare_attention
    from .analyze import write_table

    try:  # transformers' own progress bars (writing/loading the model) add nothing here
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    windows = load_corpus("builtin:stories", seq_len=args.seq_len, tokenizer=str(tok), vocab_size=50304)
    basis = compute_basis(windows, top_k=200, mode="merge-other", progress=False)
    with tempfile.TemporaryDirectory() as d:
        mdir = save_random_pythia(Path(d) / "pythia", tok, n_layers=2, d_model=64, n_heads=4, seed=args.seed)
        ad = load_model(str(mdir))
        ad.name = "random Pythia-architecture model (2 layers, 4 heads, d_model 64)"
        df = analyze_model(ad, basis, checkpoint="init", progress=False)
        write_table(df, out, "model_analysis")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            comp = compare_attention(ad, basis, args.text, name=ad.name)
        for w in caught:
            if "truncated" in str(w.message):
                print(f"warning: {w.message}")
    scale_tables.append(comp.scale_table())
    for v in comp.views():
        views.append(("Attention: Pythia-architecture model", v))
    return ("a randomly initialised Pythia-architecture model (Pythia tokenizer, basis over the 200 most frequent "
            "tokens, merge-other mode) as the real-model example")


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
        toy = model if model is not None and model.kind == "toy" else None
        assoc = associations(basis, _tokens_list(args.tokens), model=toy)
        extra += [("Association explorer", association_view(assoc, t)) for t in dict.fromkeys(assoc["token"])]
    from ..report import build_report
    path = build_report(args.results, out, title=args.title, extra_views=extra)
    print(f"report: {path}")
    return 0

"""``tl-leadterm analyze`` and ``tl-leadterm sweep``: compare models with a basis.

Both write one tidy table (columns ``checkpoint, layer, head, site, measure, value,
target, detail, extension``; see :mod:`tl_leadterm.analysis.table`) as ``DIR/analysis.csv``
and ``DIR/analysis.json`` (a list of records, NaN as null), atomically.  With
``--heldout`` the causal check is added as ``DIR/causal.csv`` / ``DIR/causal.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..config import AnalysisConfig, add_arguments, from_args
from ..errors import require
from ..io import OWNS, check_writable_dir, refuse_overwriting_inputs, staged_dir


def register(sub) -> None:
    a = sub.add_parser("analyze", help="compare a model's weights and representations with a basis (tidy CSV/JSON table)",
                       description="Toy models (toy:PATH): least-squares projection of every weight on its leading term "
                                   "(or a dictionary) and what lies beyond it. TransformerLens models (hub name or local "
                                   "directory): THEORY.md §5 similarities per layer and head, plus token-space circuits.")
    a.add_argument("--model", required=True, metavar="MODEL", help="hub name (e.g. EleutherAI/pythia-70m), local model directory, or toy:PATH")
    a.add_argument("--revision", default=None, metavar="stepN", help="Pythia training checkpoint of a hub model (step0, step1, ..., step143000)")
    _common(a)
    add_arguments(a, AnalysisConfig, include=("heldout", "heldout_windows", "seeds"))
    a.set_defaults(func=run_analyze)

    s = sub.add_parser("sweep", help="analyse several checkpoints (Pythia revisions or local directories) into one table",
                       description="Analyse a list of checkpoints in one call; results in one tidy table.")
    s.add_argument("--model", default=None, metavar="NAME", help="hub name whose revisions are listed (not needed for local directories)")
    s.add_argument("--checkpoints", required=True, metavar="LIST",
                   help="comma-separated Pythia revisions (step0,step1,step2,step4,...,step143000), local model directories, or toy:PATH")
    _common(s)
    s.set_defaults(func=run_sweep)


def _common(p) -> None:
    p.add_argument("--basis", required=True, metavar="FILE", help="basis file from 'tl-leadterm basis' (built with the model's tokenizer)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (analysis.csv, analysis.json)")
    add_arguments(p, AnalysisConfig, exclude=("heldout", "heldout_windows", "seeds"))


def lens_options(cfg: AnalysisConfig, tokenizer, vocab_size: int, seq_len: int) -> dict:
    """The analysis options of a checked :class:`~tl_leadterm.config.AnalysisConfig` (the gradient windows read now,
    before any model is analysed)."""
    kw = {"lens": cfg.lens, "null_draws": cfg.null_draws, "seed": cfg.seed}
    if cfg.sites:
        kw["sites"] = cfg.sites
    if "gradient" in cfg.lens:
        kw["gradient"] = gradient_windows(cfg.gradient_corpus, tokenizer, vocab_size, seq_len, cfg.gradient_windows, cfg.seed)
    return kw


def gradient_windows(src, tokenizer, vocab_size: int, seq_len: int, n: int, seed: int):
    """``n`` windows of length ``seq_len + 1`` drawn (seeded, without replacement) from ``src``."""
    import torch

    from ..corpus import load_corpus

    w = load_corpus(src, seq_len=seq_len, tokenizer=tokenizer, vocab_size=vocab_size)
    toks = w.tokens
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(toks), generator=g)[: min(n, len(toks))]
    return toks[idx.sort().values]


def _device(name):
    from .common import device_arg
    return device_arg(name)


def _inputs(args) -> list:
    model = getattr(args, "model", None)
    model = model[4:] if model and model.startswith("toy:") else model
    ckpts = [c[4:] if c.startswith("toy:") else c for c in str(getattr(args, "checkpoints", "") or "").split(",")]
    return [args.basis, getattr(args, "heldout", None), model, *ckpts]


def run_analyze(args) -> int:
    from ..analysis import analyze, causal_check, write_results, write_table
    from ..basis import Basis
    from ..models import load_model

    cfg = from_args(AnalysisConfig, args)
    with staged_dir(args.out, OWNS["analyze"], inputs=_inputs(args)) as stage:
        basis = Basis.load(args.basis)
        t0 = time.perf_counter()
        ad = load_model(args.model, revision=args.revision, backend=cfg.backend, device=_device(cfg.device))
        ckpt = args.revision or ""
        cc = None
        if cfg.heldout:  # read the held-out text before the long analysis: a bad file fails fast
            from ..corpus import load_corpus
            require(ad.tokenizer is not None, "the model has no tokenizer to read --heldout text; give a .npy of token windows")
            w = load_corpus(cfg.heldout, seq_len=basis.seq_len, tokenizer=ad.tokenizer, vocab_size=ad.d_vocab)
            w = w[: cfg.heldout_windows]
        require(not ad.token_space or (cfg.lens == ("weights",) and not cfg.reference and not cfg.gradient_corpus),
                "toy models are analysed through their weights only (their leading terms are exact from zero init); "
                "drop --lens, --reference and --gradient-corpus")
        kw = lens_options(cfg, ad.tokenizer, ad.d_vocab, basis.seq_len) if not ad.token_space else {}
        ref = None
        if not ad.token_space and "update" in kw.get("lens", ()):
            require(cfg.reference not in ("first", "previous"), "{reference} first/previous applies to sweep; give a folder or stepN")
            from ..models import PYTHIA_REVISIONS
            ref = load_model(args.model if cfg.reference in PYTHIA_REVISIONS else cfg.reference,
                             revision=cfg.reference if cfg.reference in PYTHIA_REVISIONS else None,
                             backend=cfg.backend, device=_device(cfg.device))
            kw.update(reference=ref, reference_label=cfg.reference)
        df = analyze(ad, basis, checkpoint=ckpt, **cfg.kwargs("circuits", "residuals", "dictionary", "top", "n_singular"),
                     **kw)
        if cfg.heldout:
            cc = causal_check(ad, basis, w if ad.token_space else w.tokens, seeds=cfg.seeds, checkpoint=ckpt)
        files = write_results(df, stage)
        if cc is not None:
            files += write_table(cc, stage, "causal")
    print(f"analyze: {ad.name} ({ad.kind}), k={basis.k}, {len(df)} rows, {time.perf_counter() - t0:.1f}s -> "
          + ", ".join(str(Path(args.out) / f.name) for f in files))
    return 0


def run_sweep(args) -> int:
    from ..analysis import parse_checkpoints, sweep, write_results
    from ..basis import Basis
    from ..basis.distributed import world

    cfg = from_args(AnalysisConfig, args)
    ckpts = parse_checkpoints(args.checkpoints)  # fail on unknown names before loading anything
    check_writable_dir(args.out)
    refuse_overwriting_inputs([Path(args.out) / n for n in OWNS["sweep"]], _inputs(args))
    basis = Basis.load(args.basis)
    t0 = time.perf_counter()
    kw = cfg.kwargs("backend", "circuits", "residuals", "dictionary", "top", "n_singular")
    tok = None
    if "gradient" in cfg.lens:          # the gradient windows need the model's tokenizer: the first checkpoint's
        from ..models import PYTHIA_REVISIONS, load_model
        c0 = ckpts[0]
        tok = load_model(args.model if c0 in PYTHIA_REVISIONS else c0, revision=c0 if c0 in PYTHIA_REVISIONS else None,
                         backend=cfg.backend).tokenizer
    kw.update(lens_options(cfg, tok, None, basis.seq_len))
    if cfg.reference:
        kw["reference"] = cfg.reference
        if world() is not None:            # ranks see a share of the checkpoints: the reference must be one model
            require(cfg.reference != "previous", "{reference} previous is not available under torchrun; give first or a checkpoint")
            if cfg.reference == "first":
                kw["reference"] = ckpts[0]
    if world() is not None:   # torchrun: checkpoints spread over the ranks, rank 0 writes the one table
        from ..analysis.sweep import sweep_distributed
        from ..basis.distributed import process_group
        with process_group(cfg.device) as (rank, size, dev):
            df = sweep_distributed(args.model, ckpts, basis, device=dev, **kw)
        if df is None:
            return 0
    else:
        df = sweep(args.model, ckpts, basis, device=_device(cfg.device), **kw)
    with staged_dir(args.out, OWNS["sweep"], inputs=_inputs(args)) as stage:
        files = write_results(df, stage, retention_threshold=cfg.retention_threshold)
    print(f"sweep: {len(ckpts)} checkpoints, k={basis.k}, {len(df)} rows, {time.perf_counter() - t0:.1f}s -> "
          + ", ".join(str(Path(args.out) / f.name) for f in files))
    return 0

"""``tl-leadterm analyze`` and ``tl-leadterm sweep``: compare models with a basis.

Both write one tidy table (columns ``checkpoint, layer, head, site, measure, value,
target, detail, extension``; see :mod:`tl_leadterm.analysis.table`) as ``DIR/analysis.csv``
and ``DIR/analysis.json`` (a list of records, NaN as null), atomically.  With
``--heldout`` the causal check is added as ``DIR/causal.csv`` / ``DIR/causal.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

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
    a.add_argument("--heldout", default=None, metavar="SRC",
                   help="held-out text (a .txt file/folder or .npy windows) for the causal check; tokenized with the model's tokenizer")
    a.add_argument("--heldout-windows", type=int, default=32, metavar="N", help="use at most N held-out windows (default 32)")
    a.add_argument("--seeds", type=int, default=5, metavar="N", help="random-direction seeds for the causal check (default 5)")
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
    p.add_argument("--dictionary", action="store_true",
                   help="project on a dictionary instead of each weight's own leading term: toy models on all basis "
                        "matrices, their transposes, identity and ones; other models on Q̄, Q̄ᵀ, ΣB̄, M, Ḡ, identity and ones")
    p.add_argument("--no-circuits", action="store_true", help="skip the token-space circuit similarity rows")
    p.add_argument("--no-residuals", action="store_true",
                   help="skip the per-head projections modulo row offsets and the residual beyond the leading term "
                        "(coef, explained, residual_norm, residual_pair, residual_sv; cost O(k² d_head) per head and site)")
    p.add_argument("--backend", choices=("auto", "bridge", "hooked"), default="auto",
                   help="TransformerLens API: bridge (TransformerBridge, TL 4.x), hooked (HookedTransformer); auto picks by installed version")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")


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

    require(args.heldout_windows >= 1, f"--heldout-windows must be >= 1 (got {args.heldout_windows})")
    require(args.seeds >= 1, f"--seeds must be >= 1 (got {args.seeds})")
    with staged_dir(args.out, OWNS["analyze"], inputs=_inputs(args)) as stage:
        basis = Basis.load(args.basis)
        t0 = time.perf_counter()
        ad = load_model(args.model, revision=args.revision, backend=args.backend, device=_device(args.device))
        ckpt = args.revision or ""
        cc = None
        if args.heldout:  # read the held-out text before the long analysis: a bad file fails fast
            from ..corpus import load_corpus
            require(ad.tokenizer is not None, "the model has no tokenizer to read --heldout text; give a .npy of token windows")
            w = load_corpus(args.heldout, seq_len=basis.seq_len, tokenizer=ad.tokenizer, vocab_size=ad.d_vocab)
            w = w[: args.heldout_windows]
        df = analyze(ad, basis, checkpoint=ckpt, circuits=not args.no_circuits, residuals=not args.no_residuals,
                     dictionary=args.dictionary)
        if args.heldout:
            cc = causal_check(ad, basis, w if ad.token_space else w.tokens, seeds=args.seeds, checkpoint=ckpt)
        files = write_results(df, stage)
        if cc is not None:
            files += write_table(cc, stage, "causal")
    print(f"analyze: {ad.name} ({ad.kind}), k={basis.k}, {len(df)} rows, {time.perf_counter() - t0:.1f}s -> "
          + ", ".join(str(Path(args.out) / f.name) for f in files))
    return 0


def run_sweep(args) -> int:
    from ..analysis import parse_checkpoints, sweep, write_results
    from ..basis import Basis
    from ..distributed import world

    ckpts = parse_checkpoints(args.checkpoints)  # fail on unknown names before loading anything
    check_writable_dir(args.out)
    refuse_overwriting_inputs([Path(args.out) / n for n in OWNS["sweep"]], _inputs(args))
    basis = Basis.load(args.basis)
    t0 = time.perf_counter()
    kw = dict(backend=args.backend, circuits=not args.no_circuits, residuals=not args.no_residuals, dictionary=args.dictionary)
    if world() is not None:   # torchrun: checkpoints spread over the ranks, rank 0 writes the one table
        from ..distributed import process_group, sweep_distributed
        with process_group(args.device) as (rank, size, dev):
            df = sweep_distributed(args.model, ckpts, basis, device=dev, **kw)
        if df is None:
            return 0
    else:
        df = sweep(args.model, ckpts, basis, device=_device(args.device), **kw)
    with staged_dir(args.out, OWNS["sweep"], inputs=_inputs(args)) as stage:
        files = write_results(df, stage)
    print(f"sweep: {len(ckpts)} checkpoints, k={basis.k}, {len(df)} rows, {time.perf_counter() - t0:.1f}s -> "
          + ", ".join(str(Path(args.out) / f.name) for f in files))
    return 0

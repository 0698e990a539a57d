"""The main job as a library function: corpus → basis → toy model (monitored) → analysis → views → report.

``run_demo(DemoConfig(out="out/demo"))`` does what ``tl-leadterm demo`` does and returns a
:class:`DemoResult`.  Every setting is a field of :class:`~tl_leadterm.config.DemoConfig` (declared,
with its default, range and help, in :mod:`tl_leadterm.config`), validated (with one-line errors that
name the field) before any work starts.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import CHECKPOINT_STEPS, DEMO_TEXT, DEMO_TOKENS, DemoConfig  # noqa: F401  (DemoConfig lives in config)
from .io import OWNS, staged_dir, write_json_atomic, write_text_atomic

#: where a development checkout keeps the Pythia tokenizer (../shared beside the repository); not needed by the package
PYTHIA_TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gpt-neox-20b-tokenizer.json"


@dataclass
class DemoResult:
    report: Path
    summary: dict
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0     # wall time (not written to any file: same inputs, same bytes)


def run_demo(cfg: DemoConfig, progress: bool = True) -> DemoResult:
    """Run the whole pipeline into ``cfg.out`` (see the module docstring)."""
    from . import visual
    from .analysis import analyze_toy, write_table
    from .basis import compute_basis
    from .corpus import load_corpus
    from .monitor import TrainingMonitor
    from .report import build_report
    from .toy import ToyConfig, ToyTransformer, train_toy

    cfg.validate()
    t_start = time.perf_counter()
    bar = None
    try:
        with staged_dir(cfg.out, OWNS["demo"]) as out:  # a failed run leaves cfg.out as it was
            bar = tqdm(total=9, desc="demo", unit="stage", disable=not progress, leave=False)
            torch.manual_seed(cfg.seed)
            _stage(bar, "corpus")
            windows = load_corpus("builtin:stories", seq_len=cfg.seq_len)
            _stage(bar, "basis")
            basis = compute_basis(windows, top_k=windows.vocab_size)
            for tok in cfg.tokens:  # unknown explorer tokens fail now, not after training
                visual.resolve_token(basis, tok)
            basis.save(out / "basis.safetensors")

            _stage(bar, "toy training")
            model = ToyTransformer(ToyConfig(windows.vocab_size, cfg.seq_len, cfg.layers), tokenizer=windows.tokenizer)
            ckpt_steps = cfg.checkpoint_steps
            snapshots: dict[int, dict] = {}
            notes: list[str] = []
            monitor = TrainingMonitor(model, basis, out / "monitor.jsonl", every=max(1, cfg.steps // 20),
                                      lr=cfg.lr if cfg.batch_size == 0 else None)

            def callback(step, m, loss):
                monitor.callback(step, m, loss)
                if step in ckpt_steps:
                    snapshots[step] = {k: v.detach().clone() for k, v in m.weights().items()}

            try:
                res = train_toy(model, windows, lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size or None,
                                seed=cfg.seed, callback=callback)
            finally:
                monitor.close()
            model.save(out / "toy.safetensors", lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size or "full", seed=cfg.seed)

            _stage(bar, "analysis")
            frames = []
            for step in ckpt_steps:
                snap = ToyTransformer(ToyConfig(windows.vocab_size, cfg.seq_len, cfg.layers), tokenizer=windows.tokenizer)
                with torch.no_grad():
                    for k, p in snap.weights().items():
                        p.copy_(snapshots[step][k])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # W and P are still ~0 at the first steps: NaN cosines warn
                    frames.append(analyze_toy(snap, basis, checkpoint=f"step{step}"))
            write_table(pd.concat(frames, ignore_index=True), out, "analysis")

            _stage(bar, "attention views")
            views = []
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                comp = visual.compare_attention(model, basis, cfg.text, name=f"toy model ({cfg.layers} layers, step {cfg.steps})")
            for w in caught:
                print(f"warning: {w.message}")
            views += [("Attention: toy model", v) for v in comp.views()]
            scale_tables = [comp.scale_table()]

            _stage(bar, "association explorer")
            assoc = visual.associations(basis, list(cfg.tokens), model=model, top=8)
            write_text_atomic(out / "associations.csv", assoc.to_csv(index=False))
            views += [("Association explorer", visual.association_view(assoc, tok)) for tok in dict.fromkeys(assoc["token"])]

            _stage(bar, "GPT-NeoX training and sweep")
            with _transformers_quiet():
                neox_note = _neox_section(cfg, out, windows, basis, views, notes, scale_tables)

            _stage(bar, "Pythia-architecture model")
            try:
                with _transformers_quiet():
                    pythia_note = _pythia_section(cfg, out, views, notes, scale_tables)
            except Exception as e:  # the optional real-model example must not sink the main job ...
                if cfg.pythia_tokenizer is not None:
                    raise  # ... unless it was asked for explicitly: an input given and failing is an error
                msg = f"Pythia-architecture section failed ({type(e).__name__}: {e}); the report shows the toy model only"
                print(f"warning: {msg}")
                notes.append(msg)
                pythia_note = "no Pythia-architecture section (it failed; see notes)"
            write_text_atomic(out / "attention_scales.csv", pd.concat(scale_tables, ignore_index=True).to_csv(index=False))

            _stage(bar, "report")
            write_json_atomic(out / "views.json", [{**v.to_json(), "section": s} for s, v in views])
            summary = {
                "text": ("The whole tl_leadterm pipeline on the embedded corpus (builtin:stories): the basis of the corpus over "
                         "its full word vocabulary, the paper's attention-only toy model trained from zero with plain SGD, its "
                         "weights compared with their leading terms at several checkpoints, attention views, the association "
                         "explorer, " + neox_note + ", and " + pythia_note + "."),
                "corpus": f"builtin:stories, {windows.n_windows} windows of T={cfg.seq_len}, |V|={windows.vocab_size}",
                "toy model": f"{cfg.layers} layers, {cfg.steps} steps, lr={cfg.lr}, "
                             + (f"batch {cfg.batch_size} windows" if cfg.batch_size else "full batch") + f", seed {cfg.seed}",
                "loss": f"{res.losses[0]:.4f} -> {res.losses[-1]:.4f}",
                "checkpoints analysed": ", ".join(f"step{s}" for s in ckpt_steps),
                "notes": "; ".join(notes) or "none",
            }
            write_json_atomic(out / "summary.json", summary)
            build_report(out, out / "report.html", title="tl_leadterm demo: gradient leading terms on the embedded corpus")
    finally:
        if bar is not None:
            bar.close()  # cleared before any error is printed: the error is the last line a user sees
    seconds = round(time.perf_counter() - t_start, 1)
    return DemoResult(Path(cfg.out) / "report.html", summary, notes, seconds)


def _stage(bar, text: str) -> None:
    bar.set_description(text)
    bar.update(1)


def _neox_section(cfg: DemoConfig, out: Path, windows, basis, views: list, notes: list, scale_tables: list) -> str:
    """A GPT-NeoX (Pythia architecture) trained from random init on the corpus with the word tokenizer (saved as a
    Hugging Face tokenizer), checkpoints on Pythia's schedule, swept with the per-head projections and residuals."""
    if cfg.neox_steps == 0:
        notes.append("trained GPT-NeoX section skipped (--neox-steps 0)")
        return "no trained GPT-NeoX"
    from . import visual
    from .analysis import analyze_model, head_fit, sweep, write_results
    from .analysis.findings import featured
    from .models import load_model, train_pythia

    name = f"GPT-NeoX trained {cfg.neox_steps} steps (2 layers, 4 heads, d_model 64, word tokenizer)"
    with tempfile.TemporaryDirectory() as d:
        where = out / "neox_checkpoints" if cfg.keep_checkpoints else Path(d) / "neox"
        ckpts = train_pythia(windows, where, steps=cfg.neox_steps, n_layers=2, d_model=64, n_heads=4,
                             lr=3e-3, batch_size=16, seed=cfg.seed, progress=False)
        steps = sorted(ckpts)
        labels = [f"step{s}" for s in steps]
        # weights and the update since step 0 at every checkpoint; the loss gradient at step 0 on a seeded sample
        g = torch.Generator().manual_seed(cfg.seed)
        sample = windows.tokens[torch.randperm(len(windows.tokens), generator=g)[:256].sort().values]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the update at step 0 is empty; zero heads give NaN with a warning
            df = sweep(None, [str(ckpts[s]) for s in steps], basis, labels=labels, progress=False,
                       lens=("weights", "update"), reference="first", null_draws=cfg.null_draws, seed=cfg.seed)
            grad = analyze_model(load_model(str(ckpts[steps[0]])), basis, labels[0], lens="gradient", gradient=sample,
                                 progress=False, null_draws=cfg.null_draws, seed=cfg.seed, n_singular=0, top=1,
                                 sites="circuit_ov,circuit_qk,key_query,circuit_ov_embed")
        df = pd.concat([df, grad], ignore_index=True)
        write_results(df, out, "neox_analysis")
        ad = load_model(str(ckpts[steps[-1]]))
        ad.name = name
        comp = visual.compare_attention(ad, basis, cfg.text, name=name)
        scale_tables.append(comp.scale_table())
        views += [("Attention: trained GPT-NeoX", v) for v in comp.views()]
        strs = basis.token_strs()
        picks = featured(df[df["lens"] == "weights"], "circuit_ov")
        if not picks:
            notes.append("no OV head of the trained GPT-NeoX stands out from random heads: none is featured")
        for what, r in picks:     # never a head at chance
            l, h, ck = int(r["layer"]), int(r["head"]), str(r["checkpoint"])
            f = head_fit(load_model(str(ckpts[steps[labels.index(ck)]])), basis, l, h, "circuit_ov")
            if f.singular:
                views.append(("Beyond the leading term: trained GPT-NeoX", visual.residual_view(
                    f, strs, f"{what} OV head L{l}H{h} at {ck} (signed cosine {r['signed_cosine']:.2g}, percentile "
                             f"{r['percentile']:.2f}): residual directions")))
        assoc = visual.associations(basis, list(cfg.tokens), model=ad, top=8)
        write_text_atomic(out / "neox_associations.csv", assoc.to_csv(index=False))
        views += [("Association explorer: trained GPT-NeoX", visual.association_view(assoc, tok))
                  for tok in dict.fromkeys(assoc["token"])]
    kept = " (kept under neox_checkpoints/)" if cfg.keep_checkpoints else ""
    return (f"a GPT-NeoX (Pythia architecture) trained from random initialisation for {cfg.neox_steps} steps with "
            f"checkpoints on Pythia's schedule{kept}, every head read through three lenses (its weights, its update since "
            f"step 0, the loss gradient at step 0) and fitted against the leading terms with a chance level from random "
            f"heads, and the residual beyond them")


@contextlib.contextmanager
def _transformers_quiet():
    """transformers' own progress bars (writing/loading the model) and loader chatter add nothing to the demo's
    output: off inside the block, as they were afterwards (a guest changes no global state for good)."""
    from .logs import quiet
    try:
        from transformers.utils import logging as hf_logging
        was = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers comes with transformer-lens
        hf_logging, was = None, False
    try:
        with quiet():
            yield
    finally:
        if hf_logging is not None and was:
            hf_logging.enable_progress_bar()


def _pythia_section(cfg: DemoConfig, out: Path, views: list, notes: list, scale_tables: list) -> str:
    """Random local Pythia-architecture model + Pythia-tokenized basis: attention views and analysis table."""
    if cfg.no_pythia:
        notes.append("Pythia-architecture section skipped (--no-pythia)")
        return "no Pythia-architecture section"
    tok = Path(cfg.pythia_tokenizer) if cfg.pythia_tokenizer is not None else PYTHIA_TOKENIZER
    if not tok.is_file():
        notes.append(f"Pythia tokenizer {tok} not found: Pythia-architecture section skipped")
        return "no Pythia-architecture section (tokenizer file not found)"
    from .analysis import analyze_model, write_table
    from .basis import compute_basis
    from .corpus import load_corpus
    from .models import load_model, save_random_pythia
    from .visual import compare_attention

    windows = load_corpus("builtin:stories", seq_len=cfg.seq_len, tokenizer=str(tok), vocab_size=50304)
    basis = compute_basis(windows, top_k=200, mode="merge-other", progress=False)
    with tempfile.TemporaryDirectory() as d:
        mdir = save_random_pythia(Path(d) / "pythia", tok, n_layers=2, d_model=64, n_heads=4, seed=cfg.seed)
        ad = load_model(str(mdir))
        ad.name = "random Pythia-architecture model (2 layers, 4 heads, d_model 64)"
        df = analyze_model(ad, basis, checkpoint="init", progress=False, null_draws=cfg.null_draws, seed=cfg.seed)
        write_table(df, out, "model_analysis")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            comp = compare_attention(ad, basis, cfg.text, name=ad.name)
        for w in caught:
            if "truncated" in str(w.message):
                print(f"warning: {w.message}")
    scale_tables.append(comp.scale_table())
    views += [("Attention: Pythia-architecture model", v) for v in comp.views()]
    return ("a randomly initialised Pythia-architecture model (Pythia tokenizer, basis over the 200 most frequent "
            "tokens, merge-other mode) as the real-model example")

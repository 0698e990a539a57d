"""Calibration of the chance levels: random Pythia-architecture models (nothing planted) analysed with nulls.

Over every head of every model and site, about 5% of percentiles should be >= 0.95 and about 5% <= 0.05 (the
null is right), and the summary (``tl_leadterm.analysis.summary``) should name a head, best or most anti-aligned,
in about 5% of its chances or fewer (its statements are family-wise at the 5% level).

    nice python benchmarks/chance_calibration.py [--models 20] [--null-draws 200]
"""

import argparse
import tempfile
import warnings
from pathlib import Path

import torch

from tl_leadterm import compute_basis, load_corpus
from tl_leadterm.analysis import analyze_model, summary
from tl_leadterm.models import load_model, save_random_pythia


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=20, help="random models (seeds 100, 101, ...)")
    ap.add_argument("--null-draws", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # a script of its own: the loader's bars would drown the figures
    corpus = load_corpus("builtin:stories", seq_len=16)
    basis = compute_basis(corpus, top_k=corpus.vocab_size, progress=False)
    sites = "circuit_ov,circuit_qk,circuit_ov_embed,key_query"
    pcts, named, summaries = [], 0, 0
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.models):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = save_random_pythia(Path(d) / f"m{i}", corpus.tokenizer, n_layers=2, d_model=32, n_heads=4,
                                       vocab_size=corpus.vocab_size, seed=100 + i)
                df = analyze_model(load_model(str(p), dtype=torch.float64), basis, "random", progress=False,
                                   null_draws=args.null_draws, n_singular=0, top=1, seed=i, sites=sites,
                                   model_targets=False)
            pcts += df[(df.measure == "signed_cosine") & df["head"].notna()].percentile.tolist()
            s = summary(df)
            summaries += len(s)
            named += int(s.best.str.startswith("L").sum() + (s.most_anti != "").sum())
    t = torch.tensor(pcts, dtype=torch.float64)
    print(f"{len(pcts)} per-head fits over {args.models} random models ({sites}), {args.null_draws} null draws each: "
          f"percentile >= 0.95: {float((t >= 0.95).double().mean()):.3f}, <= 0.05: {float((t <= 0.05).double().mean()):.3f} "
          f"(chance: 0.05 each), mean {float(t.mean()):.3f} (0.5)")
    print(f"the summary named a head (best or most anti-aligned) in {named} of {2 * summaries} chances "
          f"({summaries} site summaries): {named / (2 * summaries):.3f} (at most 0.05 by design)")


if __name__ == "__main__":
    main()

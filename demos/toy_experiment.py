"""The paper's toy experiment at CPU scale: a 3-layer toy model trained with SGD on TinyStories.

Trains the attention-only one-hot toy model (THEORY.md §1) from zero with minibatch SGD
on the TinyStories excerpt (word-level tokenizer, bounded vocabulary) and logs, through
:class:`tl_leadterm.monitor.TrainingMonitor`, the cosine similarity of every weight with
its leading term (W_O↔B̄, V↔M, W↔Q̄, P↔p̄) after every epoch.  Writes into ``--out``:

* ``monitor.jsonl``  — one record per epoch (the monitor's format);
* ``similarity.csv`` — epoch, step, loss, one column per weight;
* ``similarity.png`` — the figure (similarity over epochs);
* ``summary.json``   — settings, timings and the verdict on "cosine > 0.7 after 100 epochs".

Example (the committed results in demos/results/toy):
    nice python demos/toy_experiment.py --epochs 100 --out demos/results/toy
A tiny configuration runs in the tests (tests/test_experiments.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from tl_leadterm import compute_basis, load_corpus
from tl_leadterm.io import write_json_atomic, write_text_atomic
from tl_leadterm.monitor import TrainingMonitor, records_frame
from tl_leadterm.toy import ToyConfig, ToyTransformer, train_toy, windows_loss

HERE = Path(__file__).resolve().parent
DEFAULT_CORPUS = HERE.parent.parent / "shared" / "data" / "tinystories-train-head.txt"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS) if DEFAULT_CORPUS.is_file() else "builtin:stories",
                   help="TinyStories text (default: ../shared/data excerpt; roneneldan/TinyStories when online)")
    p.add_argument("--max-docs", type=int, default=300, help="stories used (default 300)")
    p.add_argument("--word-vocab-size", type=int, default=200, help="word vocabulary incl. <|endoftext|> and <unk> (default 200)")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=0.7, help="the paper's claim: similarity above this after training")
    p.add_argument("--out", default=str(HERE / "results" / "toy"))
    return p.parse_args(argv)


def plot(df, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tl_leadterm.theory import parse_key

    def key(col):   # the key scheme (W_O, V/L0; a CSV of an earlier release has V.0)
        try:
            return parse_key(col)
        except Exception:
            return None

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), sharey=True)
    groups = [("W_O", "W_O ↔ B̄"), ("V", "V ↔ M"), ("W", "W ↔ Q̄"), ("P", "P ↔ p̄")]
    for ax, (base, label) in zip(axes, groups):
        for col in [c for c in df.columns if key(c) is not None and key(c).site == base]:
            ax.plot(df["epoch"], df[col], marker=".", label=col if key(col).layer is None else f"layer {key(col).layer}")
        ax.axhline(0.7, color="grey", lw=0.8, ls="--")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("cosine with leading term")
    sims = df[[c for c in df.columns if key(c) is not None and key(c).site in ("W_O", "V", "W", "P")]]
    axes[0].set_ylim(min(-0.05, float(sims.min().min()) - 0.05), 1.02)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot(out: Path) -> None:
    """Redraw ``similarity.png`` from ``similarity.csv`` and ``summary.json`` (no training)."""
    import pandas as pd

    s = json.loads((out / "summary.json").read_text())["settings"]
    df = pd.read_csv(out / "similarity.csv")
    title = (f"toy model, L={s['layers']}, |V|={s['vocab_size']} words, T={s['seq_len']}, {s['n_positions']:,} positions, "
             f"SGD lr={s['lr']} batch={s['batch_size']}, {s['epochs']} epochs ({s['steps']} steps)")
    plot(df, out / "similarity.png", title)


def claim_verdict(similarity: dict, threshold: float) -> dict:
    """Per weight: does its final similarity exceed ``threshold``? (an undefined similarity does not)."""
    return {k: (v is not None and v > threshold) for k, v in similarity.items()}


def main(argv=None) -> dict:
    a = parse(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    windows = load_corpus(a.corpus, seq_len=a.seq_len, word_vocab_size=a.word_vocab_size, max_docs=a.max_docs)
    V = windows.vocab_size
    t0 = time.perf_counter()
    basis = compute_basis(windows, top_k=V, progress=False)  # full vocabulary, exact, float64
    t_basis = time.perf_counter() - t0
    model = ToyTransformer(ToyConfig(V, a.seq_len, a.layers, dtype=torch.float32), tokenizer=windows.tokenizer)
    steps_per_epoch = windows.n_windows // a.batch_size  # train_toy reshuffles when an epoch is used up
    steps = steps_per_epoch * a.epochs
    mon = TrainingMonitor(model, basis, out / "monitor.jsonl", every=steps_per_epoch, lr=a.lr)
    mon.log(0, model, windows_loss(model, windows))
    t0 = time.perf_counter()
    train_toy(model, windows, lr=a.lr, steps=steps, batch_size=a.batch_size, seed=a.seed, callback=mon.callback,
              progress=sys.stderr.isatty())
    t_train = time.perf_counter() - t0
    mon.close()
    df = records_frame(mon.records).reset_index()
    df.insert(0, "epoch", df["step"] // steps_per_epoch)
    write_text_atomic(out / "similarity.csv", df.to_csv(index=False, float_format="%.6f"))
    last = mon.records[-1]["similarity"]
    holds = claim_verdict(last, a.threshold)
    title = (f"toy model, L={a.layers}, |V|={V} words, T={a.seq_len}, {windows.n_positions:,} positions, "
             f"SGD lr={a.lr} batch={a.batch_size}, {a.epochs} epochs ({steps} steps)")
    plot(df, out / "similarity.png", title)
    summary = {
        "settings": {**vars(a), "vocab_size": V, "n_windows": windows.n_windows, "n_positions": windows.n_positions,
                     "steps_per_epoch": steps_per_epoch, "steps": steps, "dtype": "float32", "init": "zero",
                     "basis": "exact, full vocabulary, float64"},
        "seconds": {"basis": t_basis, "train": t_train, "monitor": mon.seconds},
        "final_loss": mon.records[-1]["loss"],
        "final_similarity": last,
        "claim": f"similarity > {a.threshold} after {a.epochs} epochs",
        "claim_holds": holds,
        "claim_holds_all": all(holds.values()),
    }
    write_json_atomic(out / "summary.json", summary)
    print(json.dumps({"final_similarity": last, "claim_holds_all": summary["claim_holds_all"],
                      "seconds": summary["seconds"]}, indent=1))
    return summary


if __name__ == "__main__":
    main()

"""The paper's Pythia experiment in miniature, on CPU.

A Pythia-architecture model (GPT-NeoX config, Pythia tokenizer and vocabulary of
50,304, rotary, parallel attention/MLP; :func:`tl_leadterm.models.save_random_pythia`)
is trained from random initialisation on the TinyStories excerpt with AdamW, and saved
at Pythia's log-spaced steps (0, 1, 2, 4, ..., 512, then every 1000).  The checkpoints
are analysed with the sweep (:func:`tl_leadterm.analysis.sweep`, THEORY.md §5): per layer,
the covariance cosine of the ``resid_pre`` representations with M and of the
head-averaged key-query matrix ``S`` with Q̄, over the top-k tokens (merge-other basis).
The training monitor runs alongside (``monitor.jsonl``).

Writes into ``--out``: ``sweep.csv`` (the full tidy table), ``table.csv`` (step x layer
for the two headline measures), ``heatmap.png``, ``monitor.jsonl``, ``summary.json``.
Checkpoints go to ``--ckpt-dir`` (not committed).

    nice python demos/pythia_experiment.py --out demos/results/pythia
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from tl_leadterm import compute_basis, load_corpus
from tl_leadterm.io import write_json_atomic, write_text_atomic
from tl_leadterm.monitor import TrainingMonitor

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def pythia_steps(max_steps: int) -> list[int]:
    """Pythia's checkpoint schedule up to ``max_steps``: 0, 1, 2, 4, ..., 512, then every 1000."""
    steps = [0] + [2 ** i for i in range(10) if 2 ** i <= max_steps]
    steps += list(range(1000, max_steps + 1, 1000))
    return steps


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(DATA / "tinystories-train-head.txt"))
    p.add_argument("--tokenizer", default=str(DATA / "gpt-neox-20b-tokenizer.json"))
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--top-k", type=int, default=256)
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--monitor-every", type=int, default=100)
    p.add_argument("--out", default=str(HERE / "results" / "pythia"))
    p.add_argument("--ckpt-dir", default="/tmp/tl_leadterm_pythia_ckpts")
    p.add_argument("--sweep-only", action="store_true",
                   help="skip training: analyse the step* checkpoints already in --ckpt-dir (e.g. after an interrupted run)")
    return p.parse_args(argv)


def heatmap(table, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = list(table.columns.get_level_values(0).unique())
    fig, axes = plt.subplots(1, len(measures), figsize=(6 * len(measures), 3.2))
    axes = [axes] if len(measures) == 1 else axes
    for ax, m in zip(axes, measures):
        sub = table[m]
        im = ax.imshow(sub.T.values, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower")
        ax.set_xticks(range(len(sub.index)), [str(s) for s in sub.index], rotation=60, fontsize=7)
        ax.set_yticks(range(len(sub.columns)), [f"L{c}" for c in sub.columns])
        ax.set_xlabel("training step (checkpoint)")
        ax.set_ylabel("layer")
        ax.set_title(m, fontsize=9)
        for i in range(sub.shape[0]):
            for j in range(sub.shape[1]):
                v = sub.values[i, j]
                if math.isfinite(v):
                    ax.text(i, j, f"{v:.2f}", ha="center", va="center", fontsize=5.5, color="w" if v < 0.6 else "k")
        fig.colorbar(im, ax=ax, fraction=0.03)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    a = parse(argv)
    from transformers import GPTNeoXForCausalLM

    from tl_leadterm.models import save_random_pythia

    out, ck = Path(a.out), Path(a.ckpt_dir)
    out.mkdir(parents=True, exist_ok=True)
    ck.mkdir(parents=True, exist_ok=True)
    windows = load_corpus(a.corpus, seq_len=a.seq_len, tokenizer=a.tokenizer, vocab_size=50304, max_docs=a.max_docs)
    t0 = time.perf_counter()
    basis = compute_basis(windows, top_k=a.top_k, mode="merge-other", progress=False)
    t_basis = time.perf_counter() - t0
    if a.sweep_only:
        ckpts = sorted((str(d) for d in ck.glob("step*") if (d / "config.json").is_file()),
                       key=lambda c: int(Path(c).name.removeprefix("step")))
        recs = [json.loads(x) for x in (out / "monitor.jsonl").read_text().splitlines() if x.strip()] \
            if (out / "monitor.jsonl").is_file() else []
        losses = [r["loss"] for r in recs if r.get("loss") is not None] or [float("nan")]
        t_train, mon_seconds = None, sum(r.get("monitor_seconds", 0) for r in recs)
        return analyse(a, out, basis, ckpts, windows, losses, {"basis": t_basis, "train": t_train, "monitor": mon_seconds})
    init = save_random_pythia(ck / "step0", a.tokenizer, n_layers=a.layers, d_model=a.d_model, n_heads=a.heads, seed=a.seed)
    model = GPTNeoXForCausalLM.from_pretrained(str(init))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / a.warmup))
    mon = TrainingMonitor(model, basis, out / "monitor.jsonl", every=a.monitor_every, max_tokens=a.top_k)
    save_at = set(pythia_steps(a.steps))
    g = torch.Generator().manual_seed(a.seed)
    order, cursor, losses = torch.randperm(windows.n_windows, generator=g), 0, []
    ckpts = [str(init)]
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        if cursor + a.batch_size > windows.n_windows:
            order, cursor = torch.randperm(windows.n_windows, generator=g), 0
        batch = windows.tokens[order[cursor:cursor + a.batch_size]]
        cursor += a.batch_size
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        mon.callback(step, model, losses[-1])
        if step in save_at:
            d = ck / f"step{step}"
            model.save_pretrained(str(d))
            (d / "tokenizer.json").write_bytes((init / "tokenizer.json").read_bytes())
            for f in ("tokenizer_config.json", "special_tokens_map.json"):
                if (init / f).exists():
                    (d / f).write_bytes((init / f).read_bytes())
            ckpts.append(str(d))
    t_train = time.perf_counter() - t0
    mon.close()
    return analyse(a, out, basis, ckpts, windows, losses, {"basis": t_basis, "train": t_train, "monitor": mon.seconds})


def analyse(a, out: Path, basis, ckpts: list[str], windows, losses: list[float], seconds: dict) -> dict:
    from tl_leadterm.analysis import sweep

    t0 = time.perf_counter()
    df = sweep(None, ckpts, basis, circuits=False, progress=False)
    t_sweep = time.perf_counter() - t0
    df["step"] = df["checkpoint"].map(lambda c: int(Path(c).name.removeprefix("step")))
    write_text_atomic(out / "sweep.csv", df.drop(columns=["checkpoint"]).to_csv(index=False, float_format="%.6f"))
    head = df[df["head"].isna() & (df["measure"] == "cov_cosine") & df["site"].isin(["resid_pre", "key_query"])]
    head = head.assign(name=head["site"].map({"resid_pre": "resid_pre ~ M", "key_query": "W_Q W_K^T (head avg) ~ Q-bar"}))
    table = head.pivot_table(index="step", columns=["name", "layer"], values="value").sort_index()
    table.columns = table.columns.set_levels([table.columns.levels[0], table.columns.levels[1].astype(int)])
    write_text_atomic(out / "table.csv", table.to_csv(float_format="%.4f"))
    title = (f"Pythia-architecture, {a.layers} layers, d_model={a.d_model}, {a.heads} heads, AdamW lr={a.lr}, "
             f"batch {a.batch_size}x{a.seq_len} tokens, TinyStories excerpt; cov-cosine over top-{a.top_k} tokens")
    heatmap(table, out / "heatmap.png", title)
    summary = {"settings": {**vars(a), "n_windows": windows.n_windows, "checkpoints": [Path(c).name for c in ckpts]},
               "seconds": {**seconds, "sweep": t_sweep},
               "loss": {"first": losses[0], "last": losses[-1]},
               "table": json.loads(table.to_json(orient="split"))}
    write_json_atomic(out / "summary.json", summary)
    print(table.round(3).to_string())
    print(json.dumps(summary["seconds"]), json.dumps(summary["loss"]))
    return summary


if __name__ == "__main__":
    main()

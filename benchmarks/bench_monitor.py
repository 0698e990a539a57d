"""Overhead of the training monitor at log-every-100 (target: below 5 % of training time).

Two training loops, each timed with the monitor attached:

* toy: the paper's 3-layer toy model (word vocabulary, SGD, float32) via ``train_toy``;
* pythia: a Pythia-architecture GPT-NeoX model (vocabulary 50,304, Pythia tokenizer,
  random init) trained with AdamW in a plain PyTorch loop, monitor over the top-k tokens.

The overhead is the time spent inside the monitor's calls divided by the time of the
training steps themselves (total loop time minus monitor time).  ``--ab`` also runs
each loop without a monitor and reports the wall-clock ratio (noisy on a shared machine).

    nice python benchmarks/bench_monitor.py [--toy-steps 300] [--pythia-steps 200] [--every 100]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from tl_leadterm import compute_basis, load_corpus
from tl_leadterm.monitor import TrainingMonitor
from tl_leadterm.toy import ToyConfig, ToyTransformer, train_toy

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def corpus_path() -> str:
    f = DATA / "tinystories-train-head.txt"
    return str(f) if f.is_file() else "builtin:stories"


def bench_toy(steps: int, every: int, ab: bool, vocab: int = 500, max_docs: int = 600) -> dict:
    w = load_corpus(corpus_path(), seq_len=32, word_vocab_size=vocab, max_docs=max_docs)
    basis = compute_basis(w, top_k=w.vocab_size, progress=False)
    res = {}
    for with_monitor in ([False, True] if ab else [True]):
        model = ToyTransformer(ToyConfig(w.vocab_size, 32, 3, dtype=torch.float32))
        mon = TrainingMonitor(model, basis, Path(tempfile.mkdtemp()) / "m.jsonl", every=every, lr=0.3) if with_monitor else None
        t0 = time.perf_counter()
        train_toy(model, w, lr=0.3, steps=steps, batch_size=32, progress=False, callback=mon.callback if mon else None)
        total = time.perf_counter() - t0
        _record(res, total, mon)
    if ab:
        res["wallclock_ratio"] = res["total_s"] / res["no_monitor_s"] - 1
    res["config"] = f"toy L=3 |V|={w.vocab_size} T=32 batch=32 float32, {steps} steps, basis k={basis.k}"
    return res


def _record(res: dict, total: float, mon) -> None:
    """One timed loop's figures: with a monitor, its share of the training time; without, the plain time."""
    if mon:
        mon.close()
        res.update(total_s=total, monitor_s=mon.seconds, logged=len(mon.records),
                   overhead=mon.seconds / (total - mon.seconds))
    else:
        res["no_monitor_s"] = total


def bench_pythia(steps: int, every: int, ab: bool, top_k: int) -> dict:
    from transformers import GPTNeoXForCausalLM

    from tl_leadterm.models import save_random_pythia

    tok = DATA / "gpt-neox-20b-tokenizer.json"
    w = load_corpus(corpus_path(), seq_len=64, tokenizer=str(tok), vocab_size=50304, max_docs=600)
    basis = compute_basis(w, top_k=top_k, mode="merge-other", progress=False)
    d = save_random_pythia(tempfile.mkdtemp(), tok, n_layers=2, d_model=64, n_heads=4)
    res = {}
    for with_monitor in ([False, True] if ab else [True]):
        model = GPTNeoXForCausalLM.from_pretrained(str(d)).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        mon = TrainingMonitor(model, basis, Path(tempfile.mkdtemp()) / "m.jsonl", every=every, max_tokens=top_k) if with_monitor else None
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for step in range(1, steps + 1):
            batch = w.tokens[torch.randint(0, w.n_windows, (8,), generator=g)]
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if mon:
                mon.callback(step, model, loss.detach())
        total = time.perf_counter() - t0
        _record(res, total, mon)
    if ab:
        res["wallclock_ratio"] = res["total_s"] / res["no_monitor_s"] - 1
    res["config"] = f"GPT-NeoX (Pythia arch) L=2 d_model=64 4 heads vocab=50304, AdamW, batch 8x64, {steps} steps, basis top-{top_k}"
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--toy-steps", type=int, default=300)
    p.add_argument("--pythia-steps", type=int, default=200)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--top-k", type=int, default=256)
    p.add_argument("--ab", action="store_true", help="also time each loop without the monitor")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    out = {"toy": bench_toy(a.toy_steps, a.every, a.ab), "pythia": bench_pythia(a.pythia_steps, a.every, a.ab, a.top_k)}
    for name, r in out.items():
        line = f"{name}: monitor overhead at log-every-{a.every} = {100 * r['overhead']:.2f} % of training time " \
               f"({r['monitor_s']:.3f} s monitor / {r['total_s'] - r['monitor_s']:.1f} s training, {r['logged']} records; {r['config']})"
        if "wallclock_ratio" in r:
            line += f"; wall-clock A/B: {100 * r['wallclock_ratio']:+.1f} %"
        print(line)
    print(json.dumps(out))
    ok = all(r["overhead"] < 0.05 for r in out.values())
    print("PASS (< 5 %)" if ok else "FAIL (>= 5 %)")
    return out


if __name__ == "__main__":
    main()

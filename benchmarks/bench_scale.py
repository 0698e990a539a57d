"""Corpora of real size on the CPU, ratios measured in one run.

    nice python benchmarks/bench_scale.py [--small 2000000] [--large 20000000] [--k 2048] [--seq-len 128]

1. Peak RSS of ``tl-leadterm basis`` on a 2M-token and a 20M-token ``.bin`` (uint16, vocabulary 50,304,
   Zipf-distributed ids), same k and T, each in its own process (goal: the larger costs < 20 % more).
2. Throughput of ``tl-leadterm basis`` end to end (file to file) on the large ``.bin``: one process
   against ``torchrun --nproc_per_node 2`` (goal >= 1.7x).
3. The passes against the kernel's floor, in this process: the floor is one bare gather + scatter-add
   (``index_add_``) per causal pair over the same windows (goal: each pass <= 3x the floor).
4. Tokenization: ``load_corpus`` of the shared TinyStories text with the Pythia tokenizer against the
   tokenizer's own batch encode of the same documents (goal >= 0.8x).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
BIN = Path(sys.executable).parent


def write_bin(path: Path, n: int, vocab: int = 50304, seed: int = 0) -> Path:
    g = np.random.default_rng(seed)
    ranks = g.zipf(1.2, size=n) % vocab                      # a heavy head like real text
    ranks.astype(np.uint16).tofile(path)
    return path


def cli(args: list, procs: int = 1) -> tuple[float, float]:
    """(seconds, peak RSS GB of the largest process) of one tl-leadterm run."""
    code = ("import resource, sys; from tl_leadterm.cli import main; rc = main(sys.argv[1:]); "
            "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if procs == 1:
        cmd = [sys.executable, "-c", code, *map(str, args)]
    else:
        env["OMP_NUM_THREADS"] = "1"
        cmd = [str(BIN / "torchrun"), "--nproc_per_node", str(procs), "--no-python", sys.executable, "-c", code, *map(str, args)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    rss = max(int(line.split()[1]) for line in r.stderr.splitlines() if line.startswith("RSS"))
    return dt, rss / 2**20


def floor_and_passes(path: Path, k: int, T: int) -> None:
    from tl_leadterm.basis import BasisSpec, compositions, first_pass, second_pass, top_k_of
    from tl_leadterm.corpus import open_stream

    stream = open_stream(path, seq_len=T, vocab_size=50304, chunk_windows=4096)
    ids = top_k_of(stream.token_frequencies(), 50304, k)
    spec = BasisSpec(50304, ids, "merge-other")
    chunks = list(stream)
    ti, ji = torch.tril_indices(T, T)
    W = spec.W
    t = time.perf_counter()                                  # the floor: one gather + scatter-add per causal pair
    acc = torch.zeros(W * W, dtype=torch.float64)
    remap = spec.remap
    for w in chunks:
        x = remap[w.inputs]
        idx = (x[:, ti] * W + x[:, ji]).reshape(-1)
        acc.index_add_(0, idx, torch.ones(idx.shape[0], dtype=torch.float64))
    t_floor = time.perf_counter() - t
    t = time.perf_counter()
    s1 = None
    for w in chunks:
        s = first_pass(w, spec, progress=False)
        s1 = s if s1 is None else s1 + s
    t1 = time.perf_counter() - t
    comp = compositions(s1, consume=True)
    t = time.perf_counter()
    for w in chunks:
        second_pass(w, comp, progress=False)
    t2 = time.perf_counter() - t
    n = stream.n_positions
    print(f"3. passes over {n:,} positions (T={T}, k={k}, merge-other, float64, {torch.get_num_threads()} threads): "
          f"floor {t_floor:.1f}s; pass 1 {t1:.1f}s = {t1 / t_floor:.2f}x the floor; pass 2 {t2:.1f}s = {t2 / t_floor:.2f}x the floor")


def tokenization() -> None:
    from tl_leadterm import load_corpus
    from tl_leadterm.corpus import read_documents
    from tl_leadterm.tokenization import load_hf_tokenizer

    text = DATA / "tinystories-train-head.txt"
    tok = load_hf_tokenizer(str(DATA / "gpt-neox-20b-tokenizer.json"))
    docs = read_documents(text)
    t = time.perf_counter()
    ids = tok.hf(docs, add_special_tokens=False)["input_ids"]
    t_own = time.perf_counter() - t
    n = sum(len(x) for x in ids)
    t = time.perf_counter()
    load_corpus(text, seq_len=128, tokenizer=tok, vocab_size=50304)
    t_ours = time.perf_counter() - t
    print(f"4. tokenization of {n:,} tokens: the tokenizer's batch encode {n / t_own / 1e6:.2f}M tok/s; load_corpus "
          f"(read, batch encode, windows) {n / t_ours / 1e6:.2f}M tok/s = {t_own / t_ours:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=2_000_000)
    ap.add_argument("--large", type=int, default=20_000_000)
    ap.add_argument("--k", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=128)
    a = ap.parse_args()
    print(f"CPU threads {torch.get_num_threads()}, k={a.k}, T={a.seq_len}")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        small, large = write_bin(d / "small.bin", a.small), write_bin(d / "large.bin", a.large, seed=1)
        common = ["--vocab-size", 50304, "--seq-len", a.seq_len, "--top-k", a.k, "--mode", "merge-other"]
        ts, rs = cli(["basis", "--corpus", small, *common, "--out", d / "s.safetensors"])
        tl, rl = cli(["basis", "--corpus", large, *common, "--out", d / "l.safetensors"])
        print(f"1. peak RSS: {a.small / 1e6:.0f}M tokens {rs:.2f} GB ({ts:.1f}s); {a.large / 1e6:.0f}M tokens {rl:.2f} GB "
              f"({tl:.1f}s): the larger costs {100 * (rl / rs - 1):+.1f}% memory")
        t2, r2 = cli(["basis", "--corpus", large, *common, "--out", d / "l2.safetensors"], procs=2)
        print(f"2. {a.large / 1e6:.0f}M tokens end to end: 1 process {tl:.1f}s ({a.large / tl / 1e6:.2f}M tok/s); "
              f"torchrun 2 processes {t2:.1f}s ({a.large / t2 / 1e6:.2f}M tok/s) = {tl / t2:.2f}x (peak RSS per rank {r2:.2f} GB)")
        floor_and_passes(large, a.k, a.seq_len)
    if (DATA / "gpt-neox-20b-tokenizer.json").is_file():
        tokenization()
    else:
        print("4. skipped: ../shared/data is not present")


if __name__ == "__main__":
    main()

"""``tl-leadterm basis`` and ``tl-leadterm toy-train``: the corpus, basis and toy-model stages."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import BasisConfig, MonitorConfig, TrainConfig, add_arguments, from_args
from ..errors import LeadTermError, require
from ..io import OWNS, check_writable_dir, refuse_overwriting_inputs, staged_dir, write_json_atomic
from .common import add_corpus_args, corpus_from_args, device_arg, dtype_arg, read_token_ids_file


def register(sub) -> None:
    p = sub.add_parser("basis", help="compute the basis (B̄, Φ̄, ΣB̄, M, Ḡ, Q̄, p̄) of a corpus into a safetensors file",
                       description="Compute the paper's basis functions and compositions over the k most frequent tokens "
                                   "(or an explicit list) and write them to a safetensors file.")
    add_corpus_args(p)
    add_arguments(p.add_mutually_exclusive_group(required=True), BasisConfig, include=("top_k", "token_ids"))
    add_arguments(p, BasisConfig, exclude=("top_k", "token_ids"))
    p.add_argument("--out", default=None, metavar="FILE.safetensors", help="output basis file (written atomically)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="compute only shard I of N (0-based; contiguous blocks of windows) for a run without torchrun; "
                        "round 1 writes pass-1 statistics to --stats-out, round 2 (with --pass2) pass-2 sums; see 'merge'")
    p.add_argument("--stats-out", default=None, metavar="FILE.safetensors", help="with --shard: the shard's statistics file")
    p.add_argument("--pass2", default=None, metavar="FILE",
                   help="round 2 of a sharded run: the file 'merge' wrote from every shard's round-1 statistics")
    p.set_defaults(func=run_basis)

    m = sub.add_parser("merge", help="merge shard statistics ('basis --shard I/N') in two rounds",
                       description="Pass 2 needs Ḡ of the whole corpus, so a sharded basis takes two rounds. Round 1: run "
                                   "'basis ... --shard I/N --stats-out s1_I.safetensors' for I = 0..N-1, then "
                                   "'merge --stats s1_*.safetensors --out g.safetensors'. Round 2: run "
                                   "'basis ... --shard I/N --pass2 g.safetensors --stats-out s2_I.safetensors' for every I, then "
                                   "'merge --pass2 g.safetensors --stats s2_*.safetensors --out basis.safetensors'. Every shard "
                                   "needs the same --corpus, --seq-len, --token-ids, --mode (exact or merge-other) and --dtype. Under "
                                   "torchrun none of this is needed: 'torchrun --nproc_per_node N --no-python tl-leadterm basis ...'.")
    m.add_argument("--stats", required=True, nargs="+", metavar="FILE", help="every shard's statistics file of one round")
    m.add_argument("--pass2", default=None, metavar="FILE", help="round 2: the round-1 merge's output")
    m.add_argument("--out", required=True, metavar="FILE.safetensors",
                   help="round 1: the pass-2 input file; round 2: the basis file")
    m.set_defaults(func=run_merge)

    t = sub.add_parser("toy-train", help="train the paper's toy model (zero init, plain GD/SGD) and save its weights",
                       description="Train the attention-only one-hot toy model of THEORY.md §1 from zero with plain gradient descent; "
                                   "writes DIR/toy.safetensors (W_O, W.l, V.l, P.l) and DIR/train.json.")
    add_corpus_args(t)
    add_arguments(t, TrainConfig, include=("layers", "lr", "steps"), required=("layers", "lr", "steps"))
    mode = t.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full-batch", action="store_true", help="full-batch gradient descent (the theory's setting)")
    add_arguments(mode, TrainConfig, include=("batch_size",))
    add_arguments(t, TrainConfig, include=("dtype", "device", "seed"), required=("seed",))
    add_arguments(t, MonitorConfig, include=("every",), defaults={"every": None})   # --log-every: off unless given
    t.add_argument("--out", required=True, metavar="DIR", help="output folder")
    t.set_defaults(func=run_toy_train)


def run_basis(args) -> int:
    from ..basis import compute_basis
    from ..basis.distributed import world

    require((args.shard is None) == (args.stats_out is None),
            "--shard I/N writes its statistics to --stats-out FILE (give both, or neither)")
    require((args.out is None) != (args.stats_out is None), "give --out FILE.safetensors (or, with --shard, --stats-out FILE)")
    out = Path(args.out or args.stats_out)
    require(out.suffix == ".safetensors", f"{'--out' if args.out else '--stats-out'} {out} should end in .safetensors")
    check_writable_dir(out.parent if str(out.parent) else ".")  # created only when the file is written
    refuse_overwriting_inputs([out], [args.source, args.token_ids, args.tokenizer, args.pass2])
    cfg = from_args(BasisConfig, args)
    dtype, device = dtype_arg(cfg.dtype), device_arg(cfg.device)
    from ..basis.passes import check_pass_memory
    check_pass_memory(args.seq_len, device)  # before reading the corpus: a T that cannot fit fails at once
    require(args.shard is not None or args.pass2 is None, "--pass2 is round 2 of a sharded run: give --shard I/N as well")
    token_ids = read_token_ids_file(cfg.token_ids) if cfg.token_ids else None
    if args.shard is not None:
        return _run_shard(args, cfg, out, token_ids, dtype)
    windows = corpus_from_args(args, stream=True)
    _report_dropped(windows)
    t0 = time.perf_counter()
    if world() is not None:
        from ..basis.distributed import compute_basis_distributed, process_group
        with process_group(device) as (rank, size, dev):
            basis = compute_basis_distributed(windows, top_k=cfg.top_k, token_ids=token_ids, mode=cfg.mode, dtype=dtype,
                                              device=dev, progress=rank == 0)
        if basis is None:   # ranks other than 0 write nothing
            return 0
    else:
        basis = compute_basis(windows, top_k=cfg.top_k, token_ids=token_ids, mode=cfg.mode, dtype=dtype, device=device)
    basis.save(out)
    print(f"basis: k={basis.k} tokens, |V|={basis.vocab_size}, T={basis.seq_len}, n={basis.n_positions} positions, "
          f"mode={basis.mode}, {time.perf_counter() - t0:.1f}s -> {out}")
    return 0


def _report_dropped(windows) -> None:
    dropped = getattr(windows, "dropped_tokens", 0)
    if dropped:
        print(f"note: {dropped:,} tokens in item tails shorter than T+1 are in no window (counted, not used)")


def _run_shard(args, cfg: BasisConfig, out: Path, token_ids, dtype) -> int:
    from ..basis.shards import parse_shard, shard_pass1, shard_pass2

    shard = parse_shard(args.shard)
    require(args.pass2 is not None or token_ids is not None,
            "a sharded run needs --token-ids (every shard must count the same tokens); pick them first, e.g. from a "
            "one-process basis of a sample with --top-k")
    require(cfg.mode != "auto", "a sharded run needs {mode} exact or {mode} merge-other (every shard must agree)")
    windows = corpus_from_args(args, stream=True)
    if args.pass2 is None:
        shard_pass1(windows, token_ids, shard, out, mode=cfg.mode, dtype=dtype)
        print(f"basis shard {shard[0]}/{shard[1]} round 1 (pass-1 statistics) -> {out}")
    else:
        shard_pass2(windows, args.pass2, shard, out, token_ids=token_ids, mode=cfg.mode, dtype=dtype)
        print(f"basis shard {shard[0]}/{shard[1]} round 2 (pass-2 sums) -> {out}")
    return 0


def run_merge(args) -> int:
    from ..basis.shards import merge_pass1, merge_pass2

    out = Path(args.out)
    require(out.suffix == ".safetensors", f"--out {out} should end in .safetensors")
    check_writable_dir(out.parent if str(out.parent) else ".")
    refuse_overwriting_inputs([out], [*args.stats, args.pass2])
    if args.pass2 is None:
        merge_pass1(args.stats, out)
        print(f"merge round 1: {len(args.stats)} shards -> {out} (give it to round 2 as --pass2)")
    else:
        basis = merge_pass2(args.pass2, args.stats)
        basis.save(out)
        print(f"merge round 2: {len(args.stats)} shards -> basis k={basis.k}, n={basis.n_positions} positions -> {out}")
    return 0


def run_toy_train(args) -> int:
    from ..toy import ToyConfig, ToyTransformer, train_toy

    check_writable_dir(args.out)  # nothing is created until the inputs have been checked
    refuse_overwriting_inputs([Path(args.out) / n for n in OWNS["toy-train"]], [args.source, args.tokenizer])
    cfg = from_args(TrainConfig, args)
    every = from_args(MonitorConfig, args, lr=cfg.lr).every if args.every is not None else None
    dtype, device = dtype_arg(cfg.dtype), device_arg(cfg.device)
    windows = corpus_from_args(args)
    V = windows.vocab_size
    itemsize = torch.finfo(dtype).bits // 8
    T, batch = windows.seq_len, min(windows.n_windows, cfg.batch_size or 512)   # full batch runs 512 windows at a time

    def need(T, V, layers, batch, itemsize):
        return (3 * layers + 1) * V * V * itemsize * 3 + batch * T * (T + 2 * V) * itemsize * 4 * layers

    from ..basis import available_bytes
    have = available_bytes(device)
    n = need(T, V, cfg.layers, batch, itemsize)
    if n > have:   # name only the changes that would make it fit on their own, or else all that shrink it
        fixes = [fix for fix, m in ((f"--seq-len {max(2, T // 4)} or less", need(max(2, T // 4), V, cfg.layers, batch, itemsize)),
                                    ("--word-vocab-size to shrink the vocabulary", need(T, min(V, 1024), cfg.layers, batch, itemsize)),
                                    ("fewer --layers", need(T, V, 1, batch, itemsize)),
                                    ("a smaller --batch-size", need(T, V, cfg.layers, 1, itemsize)),
                                    ("--dtype float32", need(T, V, cfg.layers, batch, 4))) if m <= have]
        raise LeadTermError(f"a toy model with |V|={V}, T={T} and {cfg.layers} layers needs about {n / 2**30:.1f} GB to train "
                            f"but {have / 2**30:.1f} GB is available; use " + (" or ".join(fixes) if fixes else
                            "a smaller vocabulary (--word-vocab-size) together with a shorter --seq-len and fewer --layers, "
                            "or a machine with more memory"))
    with staged_dir(args.out, OWNS["toy-train"], inputs=[args.source, args.tokenizer]) as stage:
        model = ToyTransformer(ToyConfig(V, windows.seq_len, cfg.layers, dtype=dtype), tokenizer=windows.tokenizer).to(device)
        monitor = None
        if every:
            from ..monitor import toy_monitor_for_cli
            monitor = toy_monitor_for_cli(model, windows, stage / "monitor.jsonl", every=every, lr=cfg.lr,
                                          dtype=dtype, device=device)
        try:
            res = train_toy(model, windows, lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.seed,
                            callback=monitor.callback if monitor is not None else None)
        finally:
            if monitor is not None:
                monitor.close()
        meta = {"lr": cfg.lr, "steps": cfg.steps, "batch_size": cfg.batch_size or "full", "seed": cfg.seed,
                "corpus_fingerprint": windows.fingerprint, "corpus_source": windows.source, "seq_len": windows.seq_len}
        model.save(stage / "toy.safetensors", **meta)
        write_json_atomic(stage / "train.json", {**meta, "vocab_size": V, "layers": cfg.layers, "losses": res.losses})
    out = Path(args.out)
    final = f"{res.losses[-1]:.4f}" if res.losses else "n/a"
    print(f"toy model: |V|={V}, T={windows.seq_len}, L={cfg.layers}, {cfg.steps} steps, final loss {final} -> {out / 'toy.safetensors'}")
    return 0

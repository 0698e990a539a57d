"""``tl-leadterm basis`` and ``tl-leadterm toy-train``: the corpus, basis and toy-model stages."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..errors import require
from ..io import OWNS, check_writable_dir, refuse_overwriting_inputs, staged_dir, write_json_atomic
from .common import add_corpus_args, corpus_from_args, device_arg, dtype_arg, read_token_ids_file


def register(sub) -> None:
    p = sub.add_parser("basis", help="compute the basis (B̄, Φ̄, ΣB̄, M, Ḡ, Q̄, p̄) of a corpus into a safetensors file",
                       description="Compute the paper's basis functions and compositions over the k most frequent tokens "
                                   "(or an explicit list) and write them to a safetensors file.")
    add_corpus_args(p)
    sel = p.add_mutually_exclusive_group(required=True)
    sel.add_argument("--top-k", type=int, metavar="K", help="use the K most frequent tokens")
    sel.add_argument("--token-ids", metavar="IDS.json", help="JSON list of token ids, in the order wanted")
    p.add_argument("--mode", choices=("auto", "exact", "merge-other"), default="auto",
                   help="exact: products over the full vocabulary; merge-other: tokens outside K share one class-average row "
                        "(for large vocabularies); auto (default): exact when it fits in memory and |V| <= 8192 (65536 on cuda), "
                        "else merge-other with a warning")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="accumulation and output precision (default float64)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--out", required=True, metavar="FILE.safetensors", help="output basis file (written atomically)")
    p.set_defaults(func=run_basis)

    t = sub.add_parser("toy-train", help="train the paper's toy model (zero init, plain GD/SGD) and save its weights",
                       description="Train the attention-only one-hot toy model of THEORY.md §1 from zero with plain gradient descent; "
                                   "writes DIR/toy.safetensors (W_O, W.l, V.l, P.l) and DIR/train.json.")
    add_corpus_args(t)
    t.add_argument("--layers", type=int, required=True, metavar="L", help="number of attention layers")
    t.add_argument("--lr", type=float, required=True, metavar="ETA", help="learning rate η")
    t.add_argument("--steps", type=int, required=True, metavar="S", help="number of gradient steps")
    mode = t.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full-batch", action="store_true", help="full-batch gradient descent (the theory's setting)")
    mode.add_argument("--batch-size", type=int, metavar="B", help="minibatch SGD with B windows per step")
    t.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="parameter precision (default float64)")
    t.add_argument("--device", default=None, help="cpu (default) or cuda")
    t.add_argument("--seed", type=int, required=True, metavar="N", help="seed for minibatch order")
    t.add_argument("--log-every", type=int, default=None, metavar="N",
                   help="every N steps, log similarity to the leading terms to DIR/monitor.jsonl (needs the basis of the corpus; computed once)")
    t.add_argument("--out", required=True, metavar="DIR", help="output folder")
    t.set_defaults(func=run_toy_train)


def run_basis(args) -> int:
    from ..basis import compute_basis

    out = Path(args.out)
    require(out.suffix == ".safetensors", f"--out {out} should end in .safetensors")
    check_writable_dir(out.parent if str(out.parent) else ".")  # created only when the file is written
    refuse_overwriting_inputs([out], [args.corpus, args.token_ids, args.tokenizer])
    dtype, device = dtype_arg(args.dtype), device_arg(args.device)
    from ..basis.passes import check_pass_memory
    check_pass_memory(args.seq_len, device)  # before reading the corpus: a T that cannot fit fails at once
    token_ids = read_token_ids_file(args.token_ids) if args.token_ids else None
    windows = corpus_from_args(args)
    t0 = time.perf_counter()
    basis = compute_basis(windows, top_k=args.top_k, token_ids=token_ids, mode=args.mode, dtype=dtype, device=device)
    basis.save(out)
    print(f"basis: k={basis.k} tokens, |V|={basis.vocab_size}, T={basis.seq_len}, n={basis.n_positions} positions, "
          f"mode={basis.mode}, {time.perf_counter() - t0:.1f}s -> {out}")
    return 0


def run_toy_train(args) -> int:
    from ..toy import ToyConfig, ToyTransformer, train_toy

    check_writable_dir(args.out)  # nothing is created until the inputs have been checked
    refuse_overwriting_inputs([Path(args.out) / n for n in OWNS["toy-train"]], [args.corpus, args.tokenizer])
    require(args.layers >= 1, f"--layers must be >= 1 (got {args.layers})")
    require(args.steps >= 0, f"--steps must be >= 0 (got {args.steps})")
    require(args.lr > 0 and math.isfinite(args.lr), f"--lr must be a positive number (got {args.lr})")
    require(args.batch_size is None or args.batch_size >= 1, f"--batch-size must be >= 1 (got {args.batch_size})")
    require(args.log_every is None or args.log_every >= 1, f"--log-every must be >= 1 (got {args.log_every})")
    dtype, device = dtype_arg(args.dtype), device_arg(args.device)
    windows = corpus_from_args(args)
    V = windows.vocab_size
    itemsize = torch.finfo(dtype).bits // 8
    T, batch = windows.seq_len, min(windows.n_windows, args.batch_size or 512)   # full batch runs 512 windows at a time
    need = (3 * args.layers + 1) * V * V * itemsize * 3 + batch * T * (T + 2 * V) * itemsize * 4 * args.layers
    from ..basis import available_bytes
    require(need <= available_bytes(device),
            f"a toy model with |V|={V}, T={T} and {args.layers} layers needs about {need / 2**30:.1f} GB to train; "
            "use a smaller --seq-len, --word-vocab-size to shrink the vocabulary, fewer --layers, a smaller --batch-size "
            "or --dtype float32")
    with staged_dir(args.out, OWNS["toy-train"], inputs=[args.corpus, args.tokenizer]) as stage:
        model = ToyTransformer(ToyConfig(V, windows.seq_len, args.layers, dtype=dtype), tokenizer=windows.tokenizer).to(device)
        monitor = None
        if args.log_every:
            from ..monitor import toy_monitor_for_cli
            monitor = toy_monitor_for_cli(model, windows, stage / "monitor.jsonl", every=args.log_every, lr=args.lr,
                                          dtype=dtype, device=device)
        try:
            res = train_toy(model, windows, lr=args.lr, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                            callback=monitor.callback if monitor is not None else None)
        finally:
            if monitor is not None:
                monitor.close()
        meta = {"lr": args.lr, "steps": args.steps, "batch_size": args.batch_size or "full", "seed": args.seed,
                "corpus_fingerprint": windows.fingerprint, "corpus_source": windows.source, "seq_len": windows.seq_len}
        model.save(stage / "toy.safetensors", **meta)
        write_json_atomic(stage / "train.json", {**meta, "vocab_size": V, "layers": args.layers, "losses": res.losses})
    out = Path(args.out)
    final = f"{res.losses[-1]:.4f}" if res.losses else "n/a"
    print(f"toy model: |V|={V}, T={windows.seq_len}, L={args.layers}, {args.steps} steps, final loss {final} -> {out / 'toy.safetensors'}")
    return 0

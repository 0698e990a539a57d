"""GPU readiness check: every CUDA path of the package in one run, each section timed and guarded.

    bash benchmarks/gpu_check.sh                 # on a GPU machine: the figures below, in under 8 minutes
    bash benchmarks/gpu_check.sh --smoke         # the same code paths on the CPU at tiny shapes (the test suite runs this)

Sections (each runs in its own Python process with its own time limit, so a crash, an out-of-memory error or a
hang in one prints a ``FAILED``/``TIMEOUT`` line and the others still run; the total is checked against
``--budget``):

1. ``basis``: :func:`~tl_leadterm.compute_basis` on a memory-mapped token stream (``.bin``, uint16) at T = 128,
   for each ``K:MODE`` of ``--basis-runs`` (default ``4096:merge-other,50304:auto``; auto is exact on cuda up to
   |V| = 65,536): tokens/s and peak CUDA memory.
2. ``torchrun``: ``tl-leadterm basis --device cuda`` as one process and under ``torchrun --nproc_per_node N``
   (NCCL, N = the GPUs present; smoke: gloo, 2 CPU processes) on the same stream; the largest absolute
   difference between the two basis files.
3. ``analysis``: :func:`~tl_leadterm.analysis.analyze_model` with ``lens="weights,update,gradient"``, a reference
   checkpoint, 256 gradient windows and 200 null draws, on a randomly initialised Pythia-1.4B shape (24 layers,
   16 heads, d_model 2048, vocabulary 50,304; :func:`~tl_leadterm.models.save_random_pythia`, loaded with
   :func:`~tl_leadterm.models.load_model` on cuda).  ``k`` is the largest of ``--analysis-k`` (a ladder, largest
   first) whose estimated memory fits the GPU; a CUDA out-of-memory error moves to the next.  A one-layer model of
   the same widths runs first (the probe); when its time per layer says that 24 layers would not fit in what is
   left of the budget, fewer layers run and the 24-layer time per lens is printed as an extrapolation (marked so).
4. ``monitor``: a small GPT-NeoX (2 layers, d_model 64) trained a few AdamW steps on cuda with
   :class:`~tl_leadterm.monitor.TrainingMonitor` called after every step (the loop of
   :func:`~tl_leadterm.models.train_pythia`, which has no device option): time per step with and without it.

Every section prints ``FIGURE <section>: ...`` lines; the last lines are a summary.  Data: the shared
TinyStories excerpt tokenized with the Pythia tokenizer when ``--data`` (default: ``shared/data`` in or beside
the repository, or ``TL_LEADTERM_SHARED``) holds it, else a synthetic uint16 token stream (seeded Zipf/Markov
tokens over a word vocabulary of 50,304 entries).  ``--json PATH`` (default ``$OUT/gpu_check.json`` when ``OUT``
is set) writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("basis", "torchrun", "analysis", "monitor")
#: share of the total budget each section may take (of what is left when it starts, at most)
SHARES = {"basis": 0.25, "torchrun": 0.15, "analysis": 0.5, "monitor": 0.1}
#: k x k float64 matrices at the peak of analyze_model(lens="weights,update,gradient"), the float32 basis included
#: (6 x 0.5): peak RSS of Targets + the three lenses on the CPU at k = 2,048 with freed memory returned at once
#: (MALLOC_MMAP_THRESHOLD_=131072) is 8.3 (13.4 at k = 1,024, where a residual block of 1,024 rows is all of k); it
#: was 16.3 (and KK_MATRICES 20) while each prepared target kept T and Tn in float64.  A CUDA OOM moves down the ladder
KK_MATRICES = 12

FULL = dict(device="cuda", vocab=50304, seq_len=128, tokens=1_000_000, basis_runs="4096:merge-other,50304:auto",
            torchrun_k=4096, torchrun_mode="merge-other", analysis_k="50304,32768,24576,16384,8192,4096",
            layers=24, heads=16, d_model=2048, gradient_windows=256, null_draws=200,
            monitor_layers=2, monitor_d_model=64, monitor_heads=4, monitor_steps=20, monitor_batch=16, monitor_k=256,
            warmup=True, budget=480.0)
SMOKE = dict(device="cpu", vocab=512, seq_len=16, tokens=20_000, basis_runs="32:merge-other,64:auto",
             torchrun_k=64, torchrun_mode="auto", analysis_k="64",
             layers=2, heads=4, d_model=32, gradient_windows=8, null_draws=10,
             monitor_layers=2, monitor_d_model=32, monitor_heads=4, monitor_steps=3, monitor_batch=4, monitor_k=32,
             warmup=False, budget=300.0)


def say(msg: str) -> None:
    print(msg, flush=True)


def figure(section: str, text: str, **values) -> None:
    """One ``FIGURE`` line (and, as JSON on the next line, its values for the parent)."""
    say(f"FIGURE {section}: {text}")
    if values:
        say("VALUES " + json.dumps({"section": section, **values}))


# ---------------------------------------------------------------------------
# helpers shared by the sections
# ---------------------------------------------------------------------------
def _torch():
    import torch
    return torch


def dev_of(cfg):
    torch = _torch()
    return torch.device(cfg["device"])


def sync(cfg) -> None:
    torch = _torch()
    if cfg["device"].startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(cfg) -> None:
    torch = _torch()
    if cfg["device"].startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak(cfg) -> str:
    torch = _torch()
    if cfg["device"].startswith("cuda"):
        return f"peak CUDA {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (CPU)"


def peak_gib(cfg) -> float:
    torch = _torch()
    if cfg["device"].startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def tokenizer_of(cfg):
    """The tokenizer the token stream was made with: the Pythia tokenizer.json, or the synthetic word vocabulary."""
    if cfg.get("tokenizer_file"):
        return cfg["tokenizer_file"]
    from tl_leadterm.tokenization import EOS_TEXT, UNK_TEXT, word_tokenizer_from_vocab
    return word_tokenizer_from_vocab([EOS_TEXT, UNK_TEXT] + [f"w{i}" for i in range(2, cfg["vocab"])], "gpu-check-words")


def stream(cfg):
    from tl_leadterm.streams import open_stream
    tok = tokenizer_of(cfg)
    if isinstance(tok, str):
        from tl_leadterm.tokenization import resolve_tokenizer
        tok = resolve_tokenizer(tok)
    return open_stream(cfg["tokens_file"], seq_len=cfg["seq_len"], vocab_size=cfg["vocab"], tokenizer=tok)


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
def find_data(arg: str | None) -> Path | None:
    cands = [Path(arg)] if arg else [ROOT / "shared" / "data", ROOT.parent / "shared" / "data"]
    if not arg and os.environ.get("TL_LEADTERM_SHARED"):
        cands.insert(0, Path(os.environ["TL_LEADTERM_SHARED"]) / "data")
    for c in cands:
        if (c / "gpt-neox-20b-tokenizer.json").is_file() and (c / "tinystories-train-head.txt").is_file():
            return c
    return None


def make_tokens(cfg, work: Path, data: Path | None) -> str:
    """Write the token stream (uint16 ``.bin``); returns a description."""
    import numpy as np

    out = work / "tokens.bin"
    if data is not None:
        from tl_leadterm import load_corpus
        tok = data / "gpt-neox-20b-tokenizer.json"
        w = load_corpus(str(data / "tinystories-train-head.txt"), seq_len=cfg["seq_len"], tokenizer=str(tok),
                        vocab_size=cfg["vocab"])
        parts = [w.tokens[i, :int(w.lengths[i])] for i in range(w.tokens.shape[0])]
        arr = np.concatenate([p.numpy() for p in parts]).astype(np.uint16)
        cfg["tokenizer_file"] = str(tok)
        what = f"TinyStories excerpt ({data}), Pythia tokenizer"
    else:
        V, n = cfg["vocab"], cfg["tokens"]
        rng = np.random.default_rng(0)
        p = 1.0 / (np.arange(V - 2) + 10.0)
        p /= p.sum()
        draws = rng.choice(V - 2, size=n, p=p) + 2          # Zipf-like unigram over ids 2..V-1
        follow = rng.permutation(V - 2) + 2                 # plus a deterministic bigram successor half the time
        keep = rng.random(n) < 0.5
        arr = draws.copy()
        arr[1:][keep[1:]] = follow[draws[:-1][keep[1:]] - 2]
        arr[rng.random(n) < 0.01] = 0                        # end-of-text now and then
        arr = arr.astype(np.uint16)
        cfg["tokenizer_file"] = None
        what = f"synthetic Zipf/Markov tokens (|V| = {V}, seed 0)"
    arr.tofile(out)
    cfg["tokens_file"] = str(out)
    return f"{what}: {arr.size:,} tokens -> {out}"


# ---------------------------------------------------------------------------
# section 1: basis on a token stream
# ---------------------------------------------------------------------------
def section_basis(cfg) -> None:
    torch = _torch()
    from tl_leadterm import compute_basis
    from tl_leadterm.basis.memory import choose_mode

    s = stream(cfg)
    for spec in cfg["basis_runs"].split(","):
        k, _, mode = spec.partition(":")
        k, mode = int(k), mode or "auto"
        dtype = torch.float32
        resolved = choose_mode(cfg["vocab"], k, mode, dtype, cfg["device"])
        reset_peak(cfg)
        sync(cfg)
        t = time.perf_counter()
        b = compute_basis(s, top_k=k, mode=mode, dtype=dtype, device=cfg["device"], progress=False)
        sync(cfg)
        dt = time.perf_counter() - t
        finite = all(bool(torch.isfinite(m).all()) for m in b.matrices.values())
        figure("basis", f"k={k} T={cfg['seq_len']} |V|={cfg['vocab']} mode={resolved} float32: {dt:.1f} s, "
               f"{s.n_positions / dt:,.0f} tokens/s ({s.n_positions:,} positions), {peak(cfg)}, finite={finite}",
               k=k, mode=resolved, seconds=dt, tokens_per_s=s.n_positions / dt, peak_gib=peak_gib(cfg), finite=finite)
        if not finite:
            raise RuntimeError(f"the basis at k={k} holds non-finite values")
        del b


# ---------------------------------------------------------------------------
# section 2: torchrun (NCCL on cuda, gloo on the CPU) against one process
# ---------------------------------------------------------------------------
def section_torchrun(cfg) -> None:
    torch = _torch()
    from tl_leadterm import Basis

    work = Path(cfg["work"])
    cuda = cfg["device"].startswith("cuda")
    n = torch.cuda.device_count() if cuda else 2
    if cuda and n < 1:
        raise RuntimeError("no CUDA device visible")
    common = ["basis", "--corpus", cfg["tokens_file"], "--vocab-size", str(cfg["vocab"]), "--seq-len", str(cfg["seq_len"]),
              "--top-k", str(cfg["torchrun_k"]), "--mode", cfg["torchrun_mode"], "--device", "cuda" if cuda else "cpu"]
    env = {**os.environ, "TQDM_DISABLE": "1", "TL_LEADTERM_DIST_TIMEOUT": "120"}
    if not cuda:
        env["OMP_NUM_THREADS"] = "1"
    one, many = work / "one.safetensors", work / "dist.safetensors"
    times = {}
    for label, cmd, out in (
            ("one process", [sys.executable, "-m", "tl_leadterm.cli", *common, "--out", str(one)], one),
            (f"torchrun {n} x {'NCCL' if cuda else 'gloo'}",
             [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
              "-m", "tl_leadterm.cli", *common, "--out", str(many)], many)):
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=str(work), env=env, capture_output=True, text=True,
                           timeout=max(10.0, cfg["deadline"] - time.time()))
        times[label] = time.perf_counter() - t
        if r.returncode != 0:
            tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"{label} exited {r.returncode}:\n{tail}")
        say(f"  {label}: {times[label]:.1f} s (process start included) -> {out.name}")
    a, b = Basis.load(one), Basis.load(many)
    same_ids = bool(torch.equal(a.token_ids, b.token_ids))
    diff = max(float((x.double() - y.double()).abs().max()) for x, y in zip(a.matrices.values(), b.matrices.values()))
    scale = max(float(x.double().abs().max()) for x in a.matrices.values())
    lbl = list(times)
    figure("torchrun", f"k={cfg['torchrun_k']} mode={a.mode} {lbl[1]} vs one process: max abs difference {diff:.3g} "
           f"(largest entry {scale:.3g}), same token ids={same_ids}; {times[lbl[0]]:.1f} s vs {times[lbl[1]]:.1f} s",
           processes=n, max_abs_diff=diff, max_abs=scale, same_ids=same_ids, seconds_one=times[lbl[0]],
           seconds_dist=times[lbl[1]])
    if not same_ids or not diff <= 1e-6 * max(scale, 1e-300):
        raise RuntimeError(f"torchrun and one process disagree (max abs difference {diff:.3g}, same ids {same_ids})")


# ---------------------------------------------------------------------------
# section 3: the per-head analysis with every lens on a Pythia-1.4B shape
# ---------------------------------------------------------------------------
def _is_oom(e: BaseException) -> bool:
    torch = _torch()
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _estimate_gib(k: int, cfg) -> float:
    d, L, V = cfg["d_model"], cfg["layers"], cfg["vocab"]
    params = V * d * 2 + L * 12 * d * d                    # embed, unembed, attention 4 d^2 + MLP 8 d^2 per layer
    return (KK_MATRICES * k * k * 8 + 2 * params * 4 + 3 * 2**30) / 2**30


def _models(cfg, tok, layers: int, work: Path):
    """A random Pythia-shaped model and a reference (seed 1) of ``layers`` layers, saved and loaded on the device."""
    from tl_leadterm.models import load_model, save_random_pythia
    kw = dict(n_layers=layers, d_model=cfg["d_model"], n_heads=cfg["heads"], vocab_size=cfg["vocab"])
    t = time.perf_counter()
    pa = save_random_pythia(work / f"pythia_{layers}_a", tok, seed=0, **kw)
    pb = save_random_pythia(work / f"pythia_{layers}_b", tok, seed=1, **kw)
    t_save = time.perf_counter() - t
    t = time.perf_counter()
    ad = load_model(str(pa), device=cfg["device"])
    ref = load_model(str(pb), device=cfg["device"])
    sync(cfg)
    return ad, ref, t_save, time.perf_counter() - t


def _run_lenses(cfg, ad, ref, basis, targets, windows, label: str) -> dict[str, float]:
    from tl_leadterm.analysis import analyze_model
    out = {}
    common = dict(progress=False, device=cfg["device"], null_draws=cfg["null_draws"], targets=targets)
    for lens, extra in (("weights", {}), ("update", dict(reference=ref, reference_label="seed1")),
                        ("gradient", dict(gradient=windows))):
        sync(cfg)
        t = time.perf_counter()
        df = analyze_model(ad, basis, label, lens=lens, **common, **extra)
        sync(cfg)
        out[lens] = time.perf_counter() - t
        say(f"  {label}: lens {lens}: {out[lens]:.1f} s, {len(df):,} rows, {peak(cfg)}")
    return out


def section_analysis(cfg) -> None:
    torch = _torch()
    from tl_leadterm import compute_basis
    from tl_leadterm.analysis.measures import Targets

    work = Path(cfg["work"])
    cuda = cfg["device"].startswith("cuda")
    tok = tokenizer_of(cfg)
    s = stream(cfg)
    w = s.to_windows()
    g = torch.Generator().manual_seed(0)
    windows = w.tokens[torch.randperm(w.tokens.shape[0], generator=g)[:cfg["gradient_windows"]]]
    ladder = [int(x) for x in str(cfg["analysis_k"]).split(",")]
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else float("inf")
    fits = [k for k in ladder if _estimate_gib(k, cfg) <= 0.85 * total_gib]
    for k in ladder:
        if k not in fits:
            say(f"  k={k}: estimated {_estimate_gib(k, cfg):.0f} GiB ({KK_MATRICES} k x k float64 matrices + models) "
                f"> 85% of {total_gib:.0f} GiB: skipped")
    if not fits:
        raise RuntimeError(f"no k of {ladder} fits the estimate; give a smaller --analysis-k")
    L = cfg["layers"]
    basis = targets = None
    for i, k in enumerate(fits):
        try:
            reset_peak(cfg)
            t = time.perf_counter()
            basis = compute_basis(s, top_k=k, mode="auto", dtype=torch.float32, device=cfg["device"], progress=False)
            say(f"  basis k={k} ({basis.mode}): {time.perf_counter() - t:.1f} s")
            targets = Targets(basis, cfg["device"])
            # probe: one layer of the same widths, targets prepared once and shared with the full run
            ad1, ref1, ts1, tl1 = _models(cfg, tok, 1, work)
            t = time.perf_counter()
            for name in ("value", "key_query", "value_output", "bigram"):
                targets.get(name)
            sync(cfg)
            t_targets = time.perf_counter() - t
            say(f"  probe (1 layer): save {ts1:.1f} s, load {tl1:.1f} s, targets {t_targets:.1f} s, {peak(cfg)}")
            probe = _run_lenses(cfg, ad1, ref1, basis, targets, windows, "probe 1 layer")
            del ad1, ref1
            break
        except Exception as e:
            if not (_is_oom(e) and i + 1 < len(fits)):
                raise
            say(f"  k={k}: CUDA out of memory ({str(e).splitlines()[0][:120]}); trying k={fits[i + 1]}")
            basis = targets = ad1 = ref1 = None
            import gc
            gc.collect()
            torch.cuda.empty_cache()
    left = cfg["deadline"] - time.time()
    per_layer = sum(probe.values())
    need = L * per_layer + (ts1 + tl1) * L                      # lenses + saving/loading, both linear in layers
    run_layers = L if need <= 0.8 * left else max(1, min(L, int(0.8 * left / (per_layer + ts1 + tl1))))
    if run_layers < L:
        say(f"  {L} layers would take about {need:.0f} s but {left:.0f} s are left: running {run_layers} layers "
            f"and extrapolating to {L}")
    ad, ref, t_save, t_load = _models(cfg, tok, run_layers, work)
    say(f"  model {run_layers} x {cfg['heads']} heads, d_model {cfg['d_model']}, |V| {cfg['vocab']}: "
        f"save {t_save:.1f} s, load {t_load:.1f} s (two models)")
    times = _run_lenses(cfg, ad, ref, basis, targets, windows, f"{run_layers} layers")
    scale = L / run_layers
    for lens, dt in times.items():
        est = dt * scale
        note = "" if run_layers == L else f" (ran {run_layers} layers: {dt:.1f} s; extrapolated)"
        figure("analysis", f"lens={lens} k={k} {L} layers x {cfg['heads']} heads d_model {cfg['d_model']} "
               f"null_draws={cfg['null_draws']}: {est:.1f} s{note}", lens=lens, k=k, layers_run=run_layers,
               layers=L, seconds=est, seconds_run=dt, extrapolated=run_layers != L)
    figure("analysis", f"update/weights {times['update'] / times['weights']:.2f}x, gradient/weights "
           f"{times['gradient'] / times['weights']:.2f}x; targets {t_targets:.1f} s once; {peak(cfg)}",
           targets_seconds=t_targets, peak_gib=peak_gib(cfg))


# ---------------------------------------------------------------------------
# section 4: the training monitor on a GPT-NeoX trained on the device
# ---------------------------------------------------------------------------
def section_monitor(cfg) -> None:
    torch = _torch()
    from transformers import GPTNeoXForCausalLM

    from tl_leadterm import compute_basis
    from tl_leadterm.models import save_random_pythia
    from tl_leadterm.monitor import TrainingMonitor

    work = Path(cfg["work"])
    s = stream(cfg)
    w = s.to_windows()
    basis = compute_basis(w, top_k=cfg["monitor_k"], mode="auto", device=cfg["device"], progress=False)
    init = save_random_pythia(work / "monitor_step0", tokenizer_of(cfg), n_layers=cfg["monitor_layers"],
                              d_model=cfg["monitor_d_model"], n_heads=cfg["monitor_heads"], vocab_size=cfg["vocab"])
    dev = dev_of(cfg)

    def train(monitor: bool) -> tuple[float, float, int, float]:
        torch.manual_seed(0)
        model = GPTNeoXForCausalLM.from_pretrained(str(init)).to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
        mon = TrainingMonitor(model, basis, work / "monitor.jsonl", every=1) if monitor else None
        g = torch.Generator().manual_seed(0)
        order = torch.randperm(w.n_windows, generator=g)
        B = cfg["monitor_batch"]
        sync(cfg)
        t = time.perf_counter()
        loss = float("nan")
        for step in range(1, cfg["monitor_steps"] + 1):
            start = ((step - 1) * B) % (w.n_windows - B + 1)
            idx = order[start:start + B]
            toks = w.tokens[idx].to(dev)
            out = model(input_ids=toks, labels=toks)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss = out.loss.item()
            if mon is not None:
                mon.callback(step, model, loss)
        sync(cfg)
        dt = time.perf_counter() - t
        n = len(mon.records) if mon else 0
        ms = mon.seconds if mon else 0.0
        if mon is not None:
            mon.close()
        return dt, ms, n, loss

    if cfg["warmup"]:
        train(False)                                # warm-up (kernels, allocator)
    plain, _, _, _ = train(False)
    with_mon, in_mon, n_rec, loss = train(True)
    steps = cfg["monitor_steps"]
    recs = [json.loads(l) for l in (work / "monitor.jsonl").read_text().splitlines() if l.strip()]
    ok = n_rec == steps and len(recs) == steps and all(r.get("similarity") for r in recs)
    figure("monitor", f"GPT-NeoX {cfg['monitor_layers']} layers d_model {cfg['monitor_d_model']} on {dev.type}, "
           f"{steps} steps of batch {cfg['monitor_batch']} x {cfg['seq_len']}: {1e3 * plain / steps:.1f} ms/step without, "
           f"{1e3 * with_mon / steps:.1f} ms/step with the monitor at every step ({1e3 * in_mon / steps:.1f} ms/step "
           f"inside it); {len(recs)} records, last loss {loss:.3f}",
           ms_per_step=1e3 * plain / steps, ms_per_step_monitor=1e3 * with_mon / steps, ms_in_monitor=1e3 * in_mon / steps,
           records=len(recs), ok=ok)
    if not ok:
        raise RuntimeError(f"the monitor wrote {len(recs)} records with similarities for {steps} steps")


RUNNERS = {"basis": section_basis, "torchrun": section_torchrun, "analysis": section_analysis,
           "monitor": section_monitor}


# ---------------------------------------------------------------------------
# the parent: prepare, run each section in its own process, summarise
# ---------------------------------------------------------------------------
def run_section(name: str, cfg_path: Path, limit: float) -> tuple[str, float, list[dict], str]:
    """Run one section as a child process; stream its output; ``(status, seconds, values, last line)``."""
    t = time.perf_counter()
    values: list[dict] = []
    last = ""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--section", name, "--config", str(cfg_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)
    import threading

    def pump():
        nonlocal last
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("VALUES "):
                values.append(json.loads(line[7:]))
                continue
            say(line)
            if line.strip():
                last = line.strip()

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        import signal
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        th.join(timeout=5)
        return "TIMEOUT", time.perf_counter() - t, values, last
    th.join(timeout=5)
    return ("ok" if rc == 0 else f"FAILED (exit {rc})"), time.perf_counter() - t, values, last


def child(args) -> int:
    cfg = json.loads(Path(args.config).read_text())
    warnings.simplefilter("once")
    try:
        RUNNERS[args.section](cfg)
    except Exception as e:
        traceback.print_exc(file=sys.stdout)
        say(f"ERROR {args.section}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return 1
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (gloo, 2 processes); well under a minute")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--budget", type=float, help="total seconds (default 480; smoke 300); each section gets its share")
    ap.add_argument("--device", help="cuda (default) or cpu; --smoke uses cpu")
    ap.add_argument("--data", help="folder with gpt-neox-20b-tokenizer.json and tinystories-train-head.txt "
                                   "(default: shared/data in or beside the repository; absent: synthetic tokens)")
    ap.add_argument("--synthetic", action="store_true", help="synthetic tokens even when the shared data is present")
    ap.add_argument("--tokens", type=int, help="synthetic stream length (default 1,000,000)")
    ap.add_argument("--vocab", type=int, help="synthetic vocabulary size (default 50,304; smoke 512)")
    ap.add_argument("--basis-runs", help="K:MODE list for section basis (default 4096:merge-other,50304:auto)")
    ap.add_argument("--torchrun-k", type=int)
    ap.add_argument("--analysis-k", help="k ladder for section analysis, largest first (default 50304,...,4096)")
    ap.add_argument("--layers", type=int, help="layers of the analysed model (default 24)")
    ap.add_argument("--null-draws", type=int)
    ap.add_argument("--work", help="scratch folder (default: a temporary folder, removed at the end)")
    ap.add_argument("--json", help="write the figures here (default: $OUT/gpu_check.json when OUT is set)")
    ap.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.section:
        return child(args)

    t_start = time.time()
    cfg = dict(SMOKE if args.smoke else FULL)
    for key in ("budget", "device", "vocab", "tokens", "basis_runs", "torchrun_k", "analysis_k", "layers", "null_draws"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    wanted = [x.strip() for x in args.sections.split(",") if x.strip()]
    bad = [x for x in wanted if x not in SECTIONS]
    if bad:
        say(f"error: unknown section {bad[0]!r}; choose from {', '.join(SECTIONS)}")
        return 2
    import platform

    import torch
    say(f"gpu_check: python {platform.python_version()}, torch {torch.__version__}, device {cfg['device']}"
        + (f" ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s), "
           f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)" if torch.cuda.is_available() else "")
        + f", {os.cpu_count()} CPUs, budget {cfg['budget']:.0f} s" + (" [smoke]" if args.smoke else ""))
    if cfg["device"].startswith("cuda") and not torch.cuda.is_available():
        say("error: CUDA is not available here; run with --smoke (CPU) or on a GPU machine")
        return 2
    tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="gpu_check_")
        work = Path(tmp.name)
    cfg["work"] = str(work)
    results: dict[str, dict] = {}
    try:
        t = time.perf_counter()
        data = None if (args.synthetic or args.smoke) else find_data(args.data)
        say(f"data: {make_tokens(cfg, work, data)} ({time.perf_counter() - t:.1f} s)")
        for name in wanted:
            left = cfg["budget"] - (time.time() - t_start)
            if left < 5:
                say(f"== {name}: SKIPPED (the {cfg['budget']:.0f} s budget is spent)")
                results[name] = {"status": "SKIPPED", "seconds": 0.0, "figures": []}
                continue
            # a section may use its share of the budget or, for the last ones, what is left
            rest = [n for n in wanted[wanted.index(name):]]
            share = SHARES[name] / sum(SHARES[n] for n in rest)
            limit = max(10.0, left * share) if name != rest[-1] else left
            cfg["deadline"] = time.time() + limit
            cfg_path = work / f"config_{name}.json"
            cfg_path.write_text(json.dumps(cfg))
            say(f"== {name}: start (limit {limit:.0f} s)")
            status, dt, values, last = run_section(name, cfg_path, limit)
            results[name] = {"status": status, "seconds": dt, "figures": values, "last": last}
            line = f"== {name}: {status} in {dt:.1f} s"
            if status != "ok":
                line += f" -- {last}" if last else ""
            say(line)
    finally:
        if tmp is not None:
            tmp.cleanup()
    total = time.time() - t_start
    say("")
    say("summary:")
    for name, r in results.items():
        n_fig = len(r["figures"])
        say(f"  {name:9s} {r['status']:18s} {r['seconds']:7.1f} s  {n_fig} figure(s)")
    within = total <= cfg["budget"]
    say(f"  total {total:.1f} s of the {cfg['budget']:.0f} s budget: {'within budget' if within else 'OVER BUDGET'}")
    out = args.json or (str(Path(os.environ["OUT"]) / "gpu_check.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps({"config": {k: v for k, v in cfg.items() if k != "deadline"},
                                         "results": results, "total_seconds": total, "within_budget": within},
                                        indent=1, default=str))
        say(f"figures written to {out}")
    failed = [n for n, r in results.items() if r["status"] != "ok"]
    return 0 if not failed and within else 1


if __name__ == "__main__":
    sys.exit(main())

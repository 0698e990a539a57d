"""Capture the package's outputs on fixed inputs, and compare two captures: the check that a refactoring kept every
result (numbers to 1e-12, text exactly).

    PYTHONPATH=/path/to/old/checkout python benchmarks/capture_outputs.py capture /tmp/old
    python benchmarks/capture_outputs.py capture /tmp/new
    python benchmarks/capture_outputs.py diff /tmp/old /tmp/new

The capture covers the toy analysis (with and without the dictionary), the causal checks (toy and a random
Pythia-architecture model), the quick measures, monitor records (toy, TransformerLens and raw Hugging Face models),
the association explorer, attention scales and ``analyze_model``.  Needs ``../shared/data``.
"""
import json
import math
import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def capture(out: Path) -> None:
    warnings.simplefilter("ignore")
    out.mkdir(parents=True, exist_ok=True)
    import tl_leadterm
    print("using", tl_leadterm.__file__)
    from tl_leadterm import compute_basis, load_corpus
    from tl_leadterm.compare import analyze_toy, analyze_model, quick_measures, causal_check
    from tl_leadterm.models import load_model, save_random_pythia
    from tl_leadterm.toy import ToyTransformer, ToyConfig, train_toy
    from tl_leadterm.monitor import TrainingMonitor
    from tl_leadterm import visual
    tok = DATA / "gpt-neox-20b-tokenizer.json"
    # toy: dictionary analysis, causal check, quick measures, monitor, explorer
    w = load_corpus("builtin:stories", seq_len=16)
    b = compute_basis(w, top_k=60, progress=False)
    torch.manual_seed(0)
    m = ToyTransformer(ToyConfig(w.vocab_size, 16, 2), tokenizer=w.tokenizer)
    mon = TrainingMonitor(m, b, out / "toy_monitor.jsonl", every=2, lr=0.5)
    train_toy(m, w, lr=0.5, steps=6, batch_size=64, seed=0, progress=False, callback=mon.callback)
    mon.close()
    analyze_toy(m, b, dictionary=True, checkpoint="x").to_csv(out / "toy_dict.csv", index=False)
    analyze_toy(m, b, checkpoint="x").to_csv(out / "toy.csv", index=False)
    causal_check(m, b, w[:8], seeds=2, progress=False).to_csv(out / "toy_causal.csv", index=False)
    json.dump(quick_measures(m, b), open(out / "toy_quick.json", "w"), indent=1, sort_keys=True)
    visual.associations(b, ["bird", "fish"], model=m).to_csv(out / "assoc.csv", index=False)
    c = visual.compare_attention(m, b, "the bird flew up in the sky")
    c.scale_table().to_csv(out / "toy_scales.csv", index=False)
    # real
    wp = load_corpus(str(DATA / "tinystories-train-head.txt"), seq_len=32, tokenizer=str(tok), vocab_size=50304, max_docs=300)
    bp = compute_basis(wp, top_k=300, mode="merge-other", progress=False)
    with tempfile.TemporaryDirectory() as d:
        md = save_random_pythia(Path(d) / "p", tok, n_layers=2, d_model=64, n_heads=4, seed=1)
        ad = load_model(str(md))
        ad.name = "random Pythia-architecture model"  # not its temporary folder: captures compare equal
        analyze_model(ad, bp, checkpoint="init", progress=False).to_csv(out / "real.csv", index=False)
        json.dump(quick_measures(ad, bp), open(out / "real_quick.json", "w"), indent=1, sort_keys=True)
        causal_check(ad, bp, wp.tokens[:4], seeds=2, progress=False).to_csv(out / "real_causal.csv", index=False)
        c = visual.compare_attention(ad, bp, "the bird flew up in the sky")
        c.scale_table().to_csv(out / "real_scales.csv", index=False)
        mon = TrainingMonitor(ad.model, bp, out / "real_monitor.jsonl", every=1)
        mon.log(0, ad.model, 1.0); mon.close()
        from transformers import GPTNeoXForCausalLM
        hf = GPTNeoXForCausalLM.from_pretrained(str(md))
        mon = TrainingMonitor(hf, bp, out / "hf_monitor.jsonl", every=1)
        mon.log(0, hf, 1.0); mon.close()
    print("done")


def diff(a: Path, b: Path) -> int:
    skip_keys = {"time", "monitor_seconds", "training seconds", "total seconds", "seconds"}
    def cmpval(x, y, where):
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            if (x is None) != (y is None): return [f"{where}: {x} vs {y}"]
            if math.isnan(x) and math.isnan(y): return []
            if abs(x - y) > 1e-12 * max(1, abs(x), abs(y)): return [f"{where}: {x} vs {y} (diff {abs(x-y):.3g})"]
            return []
        if isinstance(x, dict) and isinstance(y, dict):
            out = []
            if set(x) != set(y): out.append(f"{where}: keys differ {set(x)^set(y)}")
            for k in set(x) & set(y):
                if k in skip_keys: continue
                out += cmpval(x[k], y[k], f"{where}.{k}")
            return out
        if isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y): return [f"{where}: len {len(x)} vs {len(y)}"]
            out = []
            for i, (p, q) in enumerate(zip(x, y)): out += cmpval(p, q, f"{where}[{i}]")
            return out
        return [] if x == y else [f"{where}: {str(x)[:80]!r} vs {str(y)[:80]!r}"]
    problems = 0
    for fa in sorted(a.rglob("*")):
        if fa.is_dir(): continue
        rel = fa.relative_to(a); fb = b / rel
        if not fb.exists(): print("MISSING", rel); problems += 1; continue
        if fa.suffix == ".csv":
            da, db = pd.read_csv(fa, keep_default_na=False), pd.read_csv(fb, keep_default_na=False)
            if list(da.columns) != list(db.columns) or len(da) != len(db): print("SHAPE", rel, da.shape, db.shape); problems += 1; continue
            bad = []
            for c in da.columns:
                for i, (x, y) in enumerate(zip(da[c], db[c])):
                    if c in skip_keys: continue
                    bad += cmpval(x if not isinstance(x, str) else x, y, f"{rel}:{c}[{i}]")
            # numeric strings
            if bad: print(f"DIFF {rel}: {len(bad)}", bad[:4]); problems += 1
            else: print("same", rel)
        elif fa.suffix in (".json", ".jsonl"):
            la = [json.loads(l) for l in fa.read_text().splitlines() if l.strip()] if fa.suffix == ".jsonl" else [json.loads(fa.read_text())]
            lb = [json.loads(l) for l in fb.read_text().splitlines() if l.strip()] if fb.suffix == ".jsonl" else [json.loads(fb.read_text())]
            bad = cmpval(la, lb, str(rel))
            if bad: print(f"DIFF {rel}: {len(bad)}", bad[:4]); problems += 1
            else: print("same", rel)
        else:
            print("bytes-" + ("same" if fa.read_bytes() == fb.read_bytes() else "differ"), rel)
    print("problems", problems)
    return problems


if __name__ == "__main__":
    if sys.argv[1:2] == ["capture"]:
        capture(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["diff"]:
        sys.exit(1 if diff(Path(sys.argv[2]), Path(sys.argv[3])) else 0)
    else:
        sys.exit(__doc__)

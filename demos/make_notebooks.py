"""Write the demo notebooks (``demos/*.ipynb``, without outputs) from the cells below.

    python demos/make_notebooks.py

Each notebook runs top to bottom in CI on small settings (tests/test_notebooks.py).
Set ``TL_LEADTERM_NB_SMALL=0`` to run them at a larger size by hand.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''import os, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
os.environ.setdefault("TQDM_DISABLE", "1")
SMALL = os.environ.get("TL_LEADTERM_NB_SMALL", "1") != "0"   # CI runs the small settings
# the repository's shared data folder (../shared/data beside the repository), if present
DATA = next((p / "shared" / "data" for p in [Path.cwd(), *Path.cwd().parents] if (p / "shared" / "data").is_dir()), None)
TINYSTORIES = DATA / "tinystories-train-head.txt" if DATA else None
PYTHIA_TOKENIZER = DATA / "gpt-neox-20b-tokenizer.json" if DATA else None
print("data folder:", DATA)'''

TOY = [
    new_markdown_cell("""# The toy model end to end

Im, Oh, Fang, Li (ICLR 2026): an attention-only transformer on one-hot tokens, trained from
zero with gradient descent, learns weights that are — to leading order — simple corpus statistics:

| weight | leading term |
|---|---|
| `W_O` | η s · B̄ (bigram) |
| `V` | η² s(s−1)/2 · M = (B̄Φ̄)ᵀ |
| `W` | η⁴ Σ k²(k−1)/2 · Q̄ |
| `P` | η⁴ Σ k²(k−1)/2 · p̄ |

This notebook builds the basis of a corpus, trains the toy model, and compares (see THEORY.md)."""),
    new_code_cell(SETUP),
    new_code_cell('''import torch
from tl_leadterm import load_corpus, compute_basis
from tl_leadterm.toy import ToyTransformer, ToyConfig, train_toy

corpus = str(TINYSTORIES) if TINYSTORIES else "builtin:stories"
windows = load_corpus(corpus, seq_len=16, word_vocab_size=60 if SMALL else 400, max_docs=30 if SMALL else 1000)
basis = compute_basis(windows, top_k=windows.vocab_size, progress=False)   # exact, full vocabulary
print(windows.n_windows, "windows,", windows.vocab_size, "words; basis k =", basis.k)
print("top bigram pairs (current -> next):")
B = basis.bigram
top = torch.topk(B.flatten(), 8).indices
toks = basis.token_strs()
for i in top.tolist():
    print(f"  {toks[i // basis.k]!r:>10} -> {toks[i % basis.k]!r}")'''),
    new_markdown_cell("## Train with full-batch gradient descent from zero, small η: the leading terms are exact to high accuracy"),
    new_code_cell('''from tl_leadterm.monitor import TrainingMonitor, records_frame

eta, steps = 0.05, 6
model = ToyTransformer(ToyConfig(windows.vocab_size, 16, n_layers=2, dtype=torch.float64), tokenizer=windows.tokenizer)
mon = TrainingMonitor(model, basis, every=1, lr=eta)
train_toy(model, windows, lr=eta, steps=steps, progress=False, callback=mon.callback)
records_frame(mon.records).round(5)'''),
    new_code_cell('''# the fitted coefficient over the theory's constant: close to 1 while the leading term dominates
records_frame(mon.records, "coefficient_ratio").round(4)'''),
    new_markdown_cell("## Minibatch SGD with a large step: the weights leave the leading terms, and the monitor shows it"),
    new_code_cell('''model2 = ToyTransformer(ToyConfig(windows.vocab_size, 16, n_layers=2, dtype=torch.float32), tokenizer=windows.tokenizer)
mon2 = TrainingMonitor(model2, basis, every=10, lr=0.5)
res = train_toy(model2, windows, lr=0.5, steps=40 if SMALL else 600, batch_size=8, progress=False, callback=mon2.callback)
df = records_frame(mon2.records)
ax = df.drop(columns=["loss"]).plot(figsize=(7, 3), title="cosine with the leading term")
ax.set_ylim(-1, 1.05); df.round(3).tail()'''),
    new_markdown_cell("## Hooks: the toy model is a TransformerLens `HookedRootModule`"),
    new_code_cell('''text = "once upon a time there was a little girl"
tokens = model2.to_tokens(text)
logits, cache = model2.run_with_cache(tokens)
print(model2.to_str_tokens(tokens))
print("attention pattern of layer 0:", tuple(cache["pattern", 0].shape))
cache["pattern", 0][0, 0].numpy().round(2)'''),
    new_code_cell('''# the same leading term directly from the basis
lead = basis.leading_term("V.0", steps=steps, lr=eta)
V0 = model.V(0).detach()[basis.token_ids][:, basis.token_ids]
print("cos(V.0, M) =", float((V0 * lead).sum() / (V0.norm() * lead.norm())))
print("relative error against the leading term:", float((V0 - lead).norm() / lead.norm()))'''),
]

PYTHIA = [
    new_markdown_cell("""# Analysing Pythia checkpoints

The paper compares Pythia's representations with the basis (THEORY.md §5): each basis token is run
alone, its residual stream per layer is compared with M, and the key-query matrix `H W_Q W_Kᵀ Hᵀ`
with Q̄, by the cosine of row-centred covariances.

With network access this loads `EleutherAI/pythia-70m` at Pythia's training checkpoints
(`revision="step1000"`, …). Offline (as in CI) it falls back to a local, randomly initialised
Pythia-architecture model with the same tokenizer."""),
    new_code_cell(SETUP),
    new_code_cell('''import tempfile
from tl_leadterm.models import load_model, save_random_pythia

MODEL, REVISIONS = "EleutherAI/pythia-70m", ["step0", "step1000"] if SMALL else ["step0", "step64", "step512", "step1000", "step143000"]
try:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise OSError("offline")
    adapters = {rev: load_model(MODEL, revision=rev) for rev in REVISIONS}
    source = f"{MODEL} (hub)"
except Exception as e:
    print("hub not reachable (", type(e).__name__, ") -> local random Pythia-architecture model")
    local = save_random_pythia(tempfile.mkdtemp(), PYTHIA_TOKENIZER, n_layers=2, d_model=64, n_heads=4)
    adapters = {"random-init": load_model(str(local))}
    source = "local random model"
ad = next(iter(adapters.values()))
print(source, ad)'''),
    new_code_cell('''from tl_leadterm import load_corpus, compute_basis
corpus = str(TINYSTORIES) if TINYSTORIES else "builtin:stories"
windows = load_corpus(corpus, seq_len=32, tokenizer=str(PYTHIA_TOKENIZER), vocab_size=50304, max_docs=40 if SMALL else 2000)
basis = compute_basis(windows, top_k=48 if SMALL else 512, mode="merge-other", progress=False)
print(basis.k, "tokens:", basis.token_strs()[:20])'''),
    new_code_cell('''import pandas as pd
from tl_leadterm.analysis import analyze_model
frames = [analyze_model(a, basis, checkpoint=rev, circuits=False, progress=False) for rev, a in adapters.items()]
df = pd.concat(frames, ignore_index=True)
df.head()'''),
    new_code_cell('''sel = df[df["head"].isna() & (df["measure"] == "cov_cosine")]
table = sel.pivot_table(index=["checkpoint", "layer"], columns="site", values="value")
table.round(3)'''),
    new_code_cell('''import matplotlib.pyplot as plt
kq = df[(df["site"] == "key_query") & (df["measure"] == "cov_cosine") & df["head"].notna()]
for ck, g in kq.groupby("checkpoint"):
    m = g.pivot_table(index="layer", columns="head", values="value")
    plt.figure(figsize=(4, 2)); plt.imshow(m.values, vmin=0, vmax=1); plt.colorbar()
    plt.title(f"{ck}: key-query cov-cosine per head"); plt.xlabel("head"); plt.ylabel("layer")'''),
]

MONITOR = [
    new_markdown_cell("""# The training monitor inside a training loop

`TrainingMonitor(model, basis, path, every=N)` is called after each optimiser step of any
PyTorch loop; every N steps it appends one JSON record (similarity to the leading terms,
explained fraction, residual norm) to a JSONL file and optionally to TensorBoard. It checks
the basis against the model when it is built, and a logging failure never stops training."""),
    new_code_cell(SETUP),
    new_code_cell('''import tempfile, torch
from tl_leadterm import load_corpus, compute_basis
from tl_leadterm.toy import ToyTransformer, ToyConfig
from tl_leadterm.monitor import TrainingMonitor, read_records, records_frame

corpus = str(TINYSTORIES) if TINYSTORIES else "builtin:stories"
windows = load_corpus(corpus, seq_len=16, word_vocab_size=60, max_docs=30)
basis = compute_basis(windows, top_k=windows.vocab_size, progress=False)
model = ToyTransformer(ToyConfig(windows.vocab_size, 16, n_layers=2, dtype=torch.float32))
log = Path(tempfile.mkdtemp()) / "monitor.jsonl"

# a plain PyTorch loop with an optimizer: SGD here, as in the paper
opt = torch.optim.SGD(model.parameters(), lr=0.3)
mon = TrainingMonitor(model, basis, log, every=5, lr=0.3)
g = torch.Generator().manual_seed(0)
for step in range(1, 41 if SMALL else 1001):
    w = windows[torch.randint(0, windows.n_windows, (8,), generator=g)]
    loss = model(w.inputs, return_type="loss", targets=w.targets, valid=w.valid)
    opt.zero_grad(); loss.backward(); opt.step()
    mon.callback(step, model, loss.detach())
mon.close()
print(log.read_text().splitlines()[0][:300], "...")'''),
    new_code_cell('''df = records_frame(read_records(log))
ax = df.drop(columns=["loss"]).plot(figsize=(7, 3), title="toy model: cosine with the leading term")
df.round(3).tail()'''),
    new_markdown_cell("## A misfit basis fails when attached, not mid-run"),
    new_code_cell('''from tl_leadterm import LeadTermError
other = load_corpus("builtin:stories", seq_len=16, word_vocab_size=50)
try:
    TrainingMonitor(model, compute_basis(other, top_k=10, progress=False), every=5)
except LeadTermError as e:
    print("LeadTermError:", e)'''),
    new_markdown_cell("## A Pythia-architecture model with the Hugging Face `Trainer` (`LeadTermTrainerCallback`)"),
    new_code_cell('''if PYTHIA_TOKENIZER is None:
    print("no Pythia tokenizer in ../shared/data: skipping the Pythia part")
else:
    from transformers import GPTNeoXForCausalLM, Trainer, TrainingArguments
    from tl_leadterm.models import save_random_pythia
    from tl_leadterm.monitor import LeadTermTrainerCallback
    pw = load_corpus(corpus, seq_len=32, tokenizer=str(PYTHIA_TOKENIZER), vocab_size=50304, max_docs=30)
    pbasis = compute_basis(pw, top_k=48, mode="merge-other", progress=False)
    hf = GPTNeoXForCausalLM.from_pretrained(str(save_random_pythia(tempfile.mkdtemp(), PYTHIA_TOKENIZER)))
    plog = Path(tempfile.mkdtemp()) / "monitor.jsonl"
    pmon = TrainingMonitor(hf, pbasis, plog, every=5)
    data = [{"input_ids": x, "labels": x} for x in pw.tokens[:40]]
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=10 if SMALL else 500, per_device_train_batch_size=8,
                             learning_rate=1e-3, logging_steps=5, report_to=[], save_strategy="no", use_cpu=True,
                             disable_tqdm=True)
    Trainer(model=hf, args=args, train_dataset=data, callbacks=[LeadTermTrainerCallback(pmon)]).train()
    pdf = records_frame(read_records(plog))
    print(pdf[[c for c in pdf.columns if c.count(".") <= 1]].round(3))'''),
]


def write(name: str, cells) -> Path:
    for i, cell in enumerate(cells):  # stable cell ids: the same script writes the same bytes
        cell["id"] = f"{Path(name).stem}-{i}"
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                             "language_info": {"name": "python"}})
    path = HERE / name
    nbformat.write(nb, str(path))
    return path


def main() -> None:
    for name, cells in (("toy_model.ipynb", TOY), ("pythia_analysis.ipynb", PYTHIA), ("training_monitor.ipynb", MONITOR)):
        print("wrote", write(name, cells))


if __name__ == "__main__":
    main()

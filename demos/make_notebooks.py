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
    new_markdown_cell("""# Analysing Pythia checkpoints: three lenses and a chance level

Pythia grows from random weights, so its weights W_t mix the random start with what it learned. This
notebook reads every head three ways (`weights`, the `update` since step 0, and the loss `gradient` at
step 0), fits each against the leading terms (and against the same terms read through the model's own
geometry, `model:T`), and places every number among random heads read through the same embeddings and
inputs (`percentile`). It ends with what the report states: which heads are above chance at which
checkpoints, and per-layer retention.

With network access it loads `EleutherAI/pythia-70m` at Pythia's training checkpoints
(`revision="step0"`, …). Offline (as in CI) it trains a small GPT-NeoX from random initialisation with
`train_pythia` on the embedded corpus (checkpoints on Pythia's schedule) and analyses that trajectory.
It runs from any folder: it needs nothing beside the installed package."""),
    new_code_cell(SETUP),
    new_code_cell('''import tempfile
from tl_leadterm import load_corpus, compute_basis
from tl_leadterm.models import load_model, train_pythia

MODEL, REVISIONS = "EleutherAI/pythia-70m", ["step0", "step1", "step8", "step64", "step512", "step1000"]
try:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise OSError("offline")
    corpus = str(TINYSTORIES) if TINYSTORIES else "builtin:stories"
    windows = load_corpus(corpus, seq_len=32, tokenizer=MODEL, vocab_size=50304, max_docs=200 if SMALL else 2000)
    model, checkpoints, labels = MODEL, REVISIONS, REVISIONS
    source = f"{MODEL} (hub)"
except Exception as e:
    print("hub not reachable (", type(e).__name__, ") -> a GPT-NeoX trained here from random init (a trajectory)")
    windows = load_corpus("builtin:stories", seq_len=32)          # the word tokenizer: no file needed
    ckpts = train_pythia(windows, tempfile.mkdtemp(), steps=8 if SMALL else 64, seed=0, progress=False)
    model, checkpoints, labels = None, [str(ckpts[s]) for s in sorted(ckpts)], [f"step{s}" for s in sorted(ckpts)]
    source = "local GPT-NeoX trajectory"
basis = compute_basis(windows, top_k=min(windows.vocab_size, 512), progress=False)
print(source, "| checkpoints:", labels, "| basis k =", basis.k)'''),
    new_code_cell('''import pandas as pd
from tl_leadterm.analysis import analyze_model, sweep
draws = 50 if SMALL else 200
quick = dict(n_singular=0, top=1) if SMALL else {}
df = sweep(model, checkpoints, basis, labels=labels, lens="weights,update", reference="first", null_draws=draws,
           progress=False, sites="circuit_ov,key_query" if SMALL else "circuit_ov,circuit_qk,key_query,resid_post", **quick)
first = load_model(model, revision=checkpoints[0]) if model else load_model(checkpoints[0])
sample = windows.tokens[:32 if SMALL else 256]
grad = analyze_model(first, basis, labels[0], lens="gradient", gradient=sample, null_draws=draws, progress=False,
                     sites="circuit_ov,key_query", n_singular=0, top=1)
df = pd.concat([df, grad], ignore_index=True)
df[df.measure == "signed_cosine"].head()'''),
    new_markdown_cell("## What was found (the report's summary)"),
    new_code_cell('''from tl_leadterm.analysis import summary, retention
s = summary(df)
for r in s.itertuples():
    print(f"[{r.lens} / {r.site}] {r.sentence}")
s.drop(columns=["sentence"])'''),
    new_code_cell('''g = grad[(grad.measure == "explained") & grad["head"].isna() & (grad.site == "circuit_ov")]
g.pivot_table(index="layer", columns="target", values="value").round(3)   # model:context.T vs value_output (Ḡ)'''),
    new_code_cell('''retention(df)'''),
    new_code_cell('''import matplotlib.pyplot as plt
from tl_leadterm import plots
out = Path(tempfile.mkdtemp())
for lens in ("weights", "update"):
    p = plots.signed_heatmap(df, out / f"ov_{lens}.png", site="circuit_ov", lens=lens)
    plt.figure(figsize=(6, 4)); plt.imshow(plt.imread(p)); plt.axis("off")'''),
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

"""Model adapters: one interface over TransformerLens models, the toy model and raw GPT-NeoX.

Stable API (used by the analysis, the report and the training monitor)
-----------------------------------------------------------------------
``load_model(spec, revision=None, *, device="cpu", dtype=torch.float32, backend="auto") -> ModelAdapter``
    ``spec`` is any of

    * an already-loaded model: a TL 3.x ``HookedTransformer``, a TL 4.x
      ``TransformerBridge`` (one not in compatibility mode is folded on a copy: the
      model given is never changed), a :class:`~tl_leadterm.toy.ToyTransformer`, or a
      :class:`ModelAdapter`;
    * ``"toy:PATH"``: a ``toy.safetensors`` file or a folder holding one;
    * a local Hugging Face model directory (``config.json`` + weights + tokenizer);
    * a hub name such as ``EleutherAI/pythia-70m`` with ``revision="stepN"`` for a
      Pythia training checkpoint (needs network; the tests use local directories).

    ``backend="auto"`` uses ``TransformerBridge`` when TransformerLens >= 4 is
    installed and ``HookedTransformer`` on 3.x (``"bridge"`` / ``"hooked"`` force
    one).  Both apply TransformerLens' default weight processing (LayerNorm folded
    into W_Q/W_K/W_V and W_U, writing weights and unembedding centred, value
    biases folded), so the two backends give the same numbers.

``adapt(model, *, fold=True)`` wraps a model already in memory; a raw Hugging Face
GPT-NeoX model (e.g. Pythia being trained) becomes an :class:`HFNeoXAdapter`.
Grouped-query attention: the adapter's ``W_K``/``W_V`` are per query head
(``n_key_value_heads`` says how many distinct ones there are); hook names come from
TransformerLens' ``get_act_name`` (``ModelAdapter.act_name``).

One module per job: :mod:`.adapter` (the interface), :mod:`.hf` (raw GPT-NeoX),
:mod:`.loading` (loading, Pythia revisions), :mod:`.pythia` (Pythia-architecture models offline:
:func:`save_random_pythia`, :func:`train_pythia`).
"""

from .adapter import ModelAdapter
from .hf import HFNeoXAdapter
from .loading import (
    HAS_BRIDGE, PYTHIA_REVISIONS, PYTHIA_STEPS, adapt, default_backend, load_model, pythia_steps, tl_version,
    validate_revision,
)
from .pythia import pythia_config, save_random_pythia, train_pythia

__all__ = ["ModelAdapter", "HFNeoXAdapter", "HAS_BRIDGE", "PYTHIA_REVISIONS", "PYTHIA_STEPS", "adapt",
           "default_backend", "load_model", "pythia_steps", "tl_version", "validate_revision", "pythia_config",
           "save_random_pythia", "train_pythia"]

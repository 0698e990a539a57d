"""Loading models: hub names with Pythia revisions, local directories, toy:PATH, loaded objects.

``load_model(spec, revision=None, *, device="cpu", dtype=torch.float32, backend="auto") -> ModelAdapter``
(see :mod:`tl_leadterm.models`), ``adapt(model)`` for a model already in memory, and the Pythia
checkpoint names.

Nothing of the caller's is changed: a TransformerBridge the caller booted is folded on a copy
(:func:`adapt`), and the loaders quiet ``transformers`` / TransformerLens only inside
:func:`tl_leadterm.logs.quiet` (the levels are restored afterwards).
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import LeadTermError, require
from ..io import resolve_device
from ..logs import get_logger, quiet
from .adapter import ModelAdapter
from .hf import HFNeoXAdapter, is_hf_neox

try:  # TransformerLens 4.x
    from transformer_lens.model_bridge import TransformerBridge  # type: ignore
    HAS_BRIDGE = True
except Exception:  # pragma: no cover - TransformerLens 3.x
    TransformerBridge = None  # type: ignore
    HAS_BRIDGE = False
try:
    from transformer_lens import HookedTransformer  # type: ignore
except Exception:  # pragma: no cover
    HookedTransformer = None  # type: ignore

log = get_logger(__name__)


def tl_version() -> str:
    try:
        from importlib.metadata import version
        return version("transformer-lens")
    except Exception:  # pragma: no cover
        return "unknown"


def default_backend() -> str:
    """``"bridge"`` on TransformerLens >= 4 (TransformerBridge), ``"hooked"`` on 3.x (HookedTransformer)."""
    m = re.match(r"(\d+)", tl_version())
    return "bridge" if HAS_BRIDGE and m is not None and int(m.group(1)) >= 4 else "hooked"


# ---------------------------------------------------------------------------
# Pythia checkpoints
# ---------------------------------------------------------------------------
PYTHIA_STEPS = [0] + [2 ** i for i in range(10)] + list(range(1000, 143001, 1000))
PYTHIA_REVISIONS = [f"step{s}" for s in PYTHIA_STEPS]


def pythia_steps(max_steps: int) -> list[int]:
    """Pythia's checkpoint schedule up to ``max_steps``: 0, 1, 2, 4, ..., 512, then every 1000."""
    return [s for s in [0] + [2 ** i for i in range(10)] + list(range(1000, max_steps + 1, 1000)) if s <= max_steps]


def _revisions_hint() -> str:
    return "step0, step1, step2, step4, ..., step512, step1000, step2000, ..., step143000"


def validate_revision(revision: str) -> str:
    """Check a Pythia revision name (``stepN``); unknown names list the valid ones."""
    r = str(revision).strip()
    if r.isdigit():
        r = f"step{r}"
    require(r in PYTHIA_REVISIONS,
            f"unknown checkpoint {revision!r}; Pythia revisions are {_revisions_hint()} "
            f"({len(PYTHIA_REVISIONS)} in all), or give local model directories")
    return r



# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------
def _wrap_tokenizer(model, name: str):
    from ..tokenization import Tokenizer, wrap_hf_tokenizer
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return None
    if isinstance(tok, Tokenizer):
        return tok
    try:
        return wrap_hf_tokenizer(tok, name)
    except Exception:
        return None


def _is_toy(model) -> bool:
    from ..toy import ToyTransformer
    return isinstance(model, ToyTransformer)


def _folded(model) -> bool:
    """Is ``ln1.hook_normalized`` exactly W_Q's input (LayerNorm folded into the weights, or none)?"""
    if HAS_BRIDGE and isinstance(model, TransformerBridge):
        return bool(getattr(model, "compatibility_mode", False))
    return getattr(model.cfg, "normalization_type", None) in (None, "LNPre", "RMSPre")


def adapt(model, name: str = "", checkpoint: str = "", *, fold: bool = True) -> ModelAdapter:
    """Wrap an already-loaded model (HookedTransformer, TransformerBridge, ToyTransformer, or a
    Hugging Face GPT-NeoX model such as Pythia being trained).

    The model given is never changed.  With ``fold=True`` (the default) a TransformerBridge not
    yet in compatibility mode is copied and the copy switched to it
    (``enable_compatibility_mode()``: LayerNorm folded into the weights, classic hook names);
    the adapter's ``model`` is then that copy (the tokenizer is shared), and the caller's bridge
    keeps its mode, weights and logits.  To avoid the copy's memory, call
    ``enable_compatibility_mode()`` yourself first.  ``fold=False`` wraps the bridge as it is:
    what a training monitor needs (it must see the weights being trained).
    """
    if isinstance(model, ModelAdapter):
        return model
    if _is_toy(model):
        return ModelAdapter(model, "toy", name or "toy", checkpoint, tokenizer=model.tokenizer, token_space=True)
    if is_hf_neox(model):
        return HFNeoXAdapter(model, name or type(model).__name__, checkpoint)
    name = name or str(getattr(getattr(model, "cfg", None), "model_name", "") or type(model).__name__)
    if HAS_BRIDGE and isinstance(model, TransformerBridge):
        if fold and not getattr(model, "compatibility_mode", False):
            model = _folded_copy(model, name)
        return ModelAdapter(model, "bridge", name, checkpoint, tokenizer=_wrap_tokenizer(model, name), folded=_folded(model))
    if (HookedTransformer is not None and isinstance(model, HookedTransformer)) or (
            hasattr(model, "cfg") and hasattr(model, "blocks") and hasattr(model, "run_with_cache")):
        return ModelAdapter(model, "hooked", name, checkpoint, tokenizer=_wrap_tokenizer(model, name), folded=_folded(model))
    raise LeadTermError(f"tl_leadterm supports HookedTransformer, TransformerBridge, ToyTransformer and Hugging Face "
                        f"GPT-NeoX models, not {type(model).__name__}; give one of them, a local model directory, a hub name "
                        "or toy:PATH")


def _folded_copy(model, name: str):
    """A copy of a TransformerBridge in compatibility mode (the original is left as it is)."""
    log.info("folding a copy of TransformerBridge %s (the model given keeps its mode and weights)", name)
    memo = {id(t): t for t in (getattr(model, "tokenizer", None),) if t is not None}   # share the tokenizer
    try:
        twin = copy.deepcopy(model, memo)
    except Exception as e:
        raise LeadTermError(f"cannot copy TransformerBridge {name} to fold its LayerNorm ({type(e).__name__}); call "
                            "model.enable_compatibility_mode() yourself first, or pass fold=False") from None
    with warnings.catch_warnings(), quiet(root=True):
        warnings.simplefilter("ignore")
        twin.enable_compatibility_mode(disable_warnings=True)
    return twin


def _load_toy(path: str) -> ModelAdapter:
    from ..toy import ToyTransformer
    from ..io import input_path

    hint = "give toy:PATH with PATH a toy.safetensors file or a folder holding one"
    p = input_path(path, "toy model", hint, folder=True)
    if p.is_dir():
        p = input_path(p / "toy.safetensors", "toy model", hint)
    model = ToyTransformer.load(p)
    return adapt(model, f"toy:{path}")


def _load_hooked(spec: str, revision: str | None, device, dtype) -> Any:
    """TL 3.x HookedTransformer from a local directory or a hub name."""
    import contextlib
    import io
    import transformer_lens.loading_from_pretrained as loading
    p = Path(spec)
    if p.is_dir():
        from transformers import AutoModelForCausalLM, AutoTokenizer
        try:
            hf = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype)
            tok = AutoTokenizer.from_pretrained(str(p))
        except Exception as e:
            raise LeadTermError(f"{p} is not a loadable Hugging Face model directory ({type(e).__name__}); "
                                "give a folder written by save_pretrained (config.json, weights, tokenizer)") from None
        # HookedTransformer.from_pretrained only accepts official names; build the config from the local files
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cfg = loading.get_pretrained_model_config(str(p.resolve()), fold_ln=True, device=device, dtype=dtype)
            state = loading.get_pretrained_state_dict(str(p.resolve()), cfg, hf, dtype=dtype)
            model = HookedTransformer(cfg, tok, move_to_device=False)
            model.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=True,
                                              center_unembed=True, fold_value_biases=True)
            model = model.to(device)
        return model
    kw = {}
    if revision is not None:
        kw["checkpoint_value"] = int(validate_revision(revision)[4:])
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return HookedTransformer.from_pretrained(spec, device=device, dtype=dtype, **kw)
    except Exception as e:
        raise LeadTermError(f"could not load model {spec!r} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                            "give a local model directory, toy:PATH, or a hub name reachable from this machine") from None


def _load_bridge(spec: str, revision: str | None, device, dtype) -> Any:
    """TL 4.x TransformerBridge from a local directory or a hub name, in compatibility mode."""
    p = Path(spec)
    kw = {}
    if not p.is_dir() and revision is not None:
        kw["revision"] = validate_revision(revision)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = TransformerBridge.boot_transformers(str(p.resolve()) if p.is_dir() else spec, device=device, dtype=dtype, **kw)
            model.enable_compatibility_mode(disable_warnings=True)
    except Exception as e:
        where = "local directory" if p.is_dir() else "hub name"
        raise LeadTermError(f"could not load {where} {spec!r} with TransformerBridge ({type(e).__name__}); "
                            "give a folder written by save_pretrained, toy:PATH, or a hub name reachable from this machine") from None
    return model


def load_model(spec, revision: str | None = None, *, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, backend: str = "auto") -> ModelAdapter:
    """Load or wrap a model (see module docstring) and return a :class:`ModelAdapter`."""
    device = resolve_device(device)
    require(dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16),
            f"{{dtype}} must be a torch floating dtype such as torch.float32, got {dtype!r}")
    if not isinstance(spec, (str, os.PathLike)):
        require(revision is None, "revision= applies to hub names only; load the checkpoint yourself or pass its name")
        return adapt(spec)
    s = str(spec)
    if s.startswith("toy:"):
        require(revision is None, "toy models have no revisions; give one toy:PATH per checkpoint")
        return _load_toy(s[4:])
    require(backend in ("auto", "bridge", "hooked"), f"backend must be auto, bridge or hooked, got {backend!r}")
    use_bridge = (backend == "bridge") or (backend == "auto" and default_backend() == "bridge")
    if backend == "bridge":
        require(HAS_BRIDGE, "backend='bridge' needs TransformerLens 4.x; install transformer-lens>=4 or use backend='hooked'")
    if not use_bridge:
        require(HookedTransformer is not None,
                f"backend='hooked' needs HookedTransformer, which TransformerLens {tl_version()} removed; use backend='bridge' (or auto)")
    from ..io import input_path

    p = input_path(s, "model", "give a Hugging Face model folder or a hub name", folder=True, missing_ok=True)
    if p.exists() and not p.is_dir():
        raise LeadTermError(f"{s} is a file, not a model directory; give a Hugging Face model folder, a hub name, or toy:{s} for a toy model")
    if p.is_dir():
        require(revision is None, f"{s} is a local directory: it has no revisions; list checkpoint directories instead")
        require((p / "config.json").is_file(), f"{s} has no config.json; give a folder written by save_pretrained, or toy:{s} for a toy model")
    elif revision is not None:
        validate_revision(revision)
    log.info("loading %s%s with %s", s, "" if revision is None else f" at {revision}", "TransformerBridge" if use_bridge else "HookedTransformer")
    with quiet(root=True):   # transformers / TransformerLens chatter, for the duration of the load only
        model = _load_bridge(s, revision, device, dtype) if use_bridge else _load_hooked(s, revision, device, dtype)
    ckpt = "" if revision is None else validate_revision(revision)
    name = str(p.resolve()) if p.is_dir() else s
    return adapt(model, name, ckpt)

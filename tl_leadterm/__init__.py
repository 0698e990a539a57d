"""tl_leadterm: gradient leading terms as a TransformerLens plugin.

Implements Im, Oh, Fang, Li, "How Do Transformers Learn to Associate Tokens:
Gradient Leading Terms Bring Mechanistic Interpretability" (ICLR 2026): the
basis functions of a corpus (bigram B̄, context Φ̄, interchangeability ΣB̄) and
their compositions (M, Ḡ, Q̄, p̄), the paper's toy model, and comparisons of
TransformerLens models with them.

Pipeline stages, each a module or a package of them (docs/ARCHITECTURE.md has
the map): the corpus (:mod:`~tl_leadterm.corpus` and the token-file readers) →
the basis (:mod:`~tl_leadterm.basis`) → the toy model (:mod:`~tl_leadterm.toy`) →
model adapters (:mod:`~tl_leadterm.models`) → the analysis
(:mod:`~tl_leadterm.analysis`, also :mod:`~tl_leadterm.compare`) → views, the
training monitor and its sinks, the report.

The package logs through ``logging.getLogger("tl_leadterm")`` (:mod:`~tl_leadterm.logs`)
and never changes the root logger, another library's logging or a model it is given.
"""

from ._version import __version__  # noqa: E402

from .errors import LeadTermError  # noqa: E402
from . import config  # noqa: E402,F401  (the parameters: registers their names for messages, errors.PARAMS)
from .corpus import Windows, load_corpus, read_documents, windows_from_tokens  # noqa: E402
from .tokenization import Tokenizer, build_word_tokenizer, resolve_tokenizer  # noqa: E402
from .basis import Basis, compute_basis, compute_basis_sharded, leading_coefficient  # noqa: E402
from .theory import SITES, measure_key, parse_key  # noqa: E402  (the site registry and the one key scheme)

# Later stages import TransformerLens (slow); they load on first use: ``tl_leadterm.load_model`` etc.
_LAZY = {
    "ToyTransformer": "toy", "ToyConfig": "toy", "train_toy": "toy",
    "ModelAdapter": "models", "load_model": "models", "adapt": "models",
    "analyze_toy": "compare", "analyze_model": "compare", "sweep": "compare",
    "causal_check": "compare", "quick_measures": "compare", "fit_circuit": "compare", "rank_heads": "compare",
    "retention": "compare", "summary": "compare", "head_gradients": "compare", "Factored": "compare",
    "compare_attention": "visual", "associations": "visual",
    "build_report": "report", "Report": "report",
    "TrainingMonitor": "monitor", "LeadTermTrainerCallback": "monitor", "read_records": "monitor",
    "JSONLSink": "sinks", "TensorBoardSink": "sinks", "WandbSink": "sinks",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tl_leadterm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__", "LeadTermError", "Windows", "load_corpus", "read_documents", "windows_from_tokens",
    "Tokenizer", "build_word_tokenizer", "resolve_tokenizer", "Basis", "compute_basis",
    "compute_basis_sharded", "leading_coefficient", "SITES", "measure_key", "parse_key", *_LAZY,
]

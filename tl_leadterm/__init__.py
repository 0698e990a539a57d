"""tl_leadterm: gradient leading terms as a TransformerLens plugin.

Implements Im, Oh, Fang, Li, "How Do Transformers Learn to Associate Tokens:
Gradient Leading Terms Bring Mechanistic Interpretability" (ICLR 2026): the
basis functions of a corpus (bigram B̄, context Φ̄, interchangeability ΣB̄) and
their compositions (M, Ḡ, Q̄, p̄), the paper's toy model, and comparisons of
TransformerLens models with them.

Pipeline stages, one module each: :mod:`~tl_leadterm.corpus` →
:mod:`~tl_leadterm.basis` → :mod:`~tl_leadterm.toy` (the toy model) → model
adapters → comparison → report.
"""

__version__ = "0.1.0"

from .errors import LeadTermError  # noqa: E402
from .corpus import Windows, load_corpus, read_documents, windows_from_tokens  # noqa: E402
from .tokenization import Tokenizer, build_word_tokenizer, resolve_tokenizer  # noqa: E402
from .basis import Basis, compute_basis, compute_basis_sharded, leading_coefficient  # noqa: E402

__all__ = [
    "__version__", "LeadTermError", "Windows", "load_corpus", "read_documents", "windows_from_tokens",
    "Tokenizer", "build_word_tokenizer", "resolve_tokenizer", "Basis", "compute_basis",
    "compute_basis_sharded", "leading_coefficient",
]

"""Basis stage: the paper's basis functions and their compositions from a corpus.

Notation and orientation follow THEORY.md (§2-3); the names, symbols and orientations
are :data:`tl_leadterm.theory.TERMS`.  With ``n`` data positions,
``r_t = y_t - 1/|V|`` and ``c_t`` the uniform causal average of the context:

=================  =======================  ===========================  ================
tensor name        symbol                   definition                   rows x cols
=================  =======================  ===========================  ================
``bigram``         B̄                        (1/n) Σ_t x_tᵀ r_t           current x next
``context``        Φ̄                        (1/n) Σ_t r_tᵀ c_t           next x context
``interchange``    ΣB̄                       B̄ᵀ B̄                         next x next
``value``          M                        (B̄ Φ̄)ᵀ = Φ̄ᵀ B̄ᵀ              context x current
``value_output``   Ḡ                        M B̄ = Φ̄ᵀ ΣB̄                 context x next
``key_query``      Q̄                        (1/n) Σ_t Σ_k x_tᵀ g_t[k] x_k  query x key
``position``       p̄                        (1/n) Σ_t g_t[t-δ]           δ = 0..T-1
=================  =======================  ===========================  ================

All definitions are over the full vocabulary ``V``; a basis keeps the ``k x k``
sub-block for ``k`` chosen tokens (top-k by frequency or an explicit list, in
that order) and the full ``p̄``.

One module per job: :mod:`.memory` (how much memory, which mode), :mod:`.tokens` (which
tokens), :mod:`.passes` (the two streaming passes and the compositions; modes and algorithm
documented there), :mod:`.pipeline` (the one pipeline, frequencies → pass 1 → compositions →
pass 2 → :class:`Basis`, with a pluggable reduction), :mod:`.value` (the :class:`Basis` value
and its file), :mod:`.compute` (:func:`compute_basis`, :func:`compute_basis_sharded`: one
process), :mod:`.distributed` (torchrun ranks: all-reduce) and :mod:`.shards` (shards run as
separate jobs, merged in two rounds of files).
"""

from ..theory import MATRIX_NAMES, TENSOR_NAMES, leading_coefficient
from .compute import compute_basis, compute_basis_sharded
from .memory import AUTO_EXACT_MAX_VOCAB, Mode, available_bytes, choose_mode, estimate_bytes
from .passes import (
    BasisSpec, Compositions, FirstPassStats, SecondPassStats, compositions, first_pass, second_pass,
)
from .pipeline import LocalReduction, Reduction, assemble, run_pipeline
from .tokens import token_frequencies, top_k_of, top_k_tokens, validate_token_ids
from .value import BASIS_FORMAT, Basis

__all__ = [
    "MATRIX_NAMES", "TENSOR_NAMES", "leading_coefficient", "assemble", "compute_basis", "compute_basis_sharded",
    "token_frequencies", "top_k_of", "top_k_tokens", "validate_token_ids", "LocalReduction", "Reduction", "run_pipeline",
    "AUTO_EXACT_MAX_VOCAB", "Mode", "available_bytes",
    "choose_mode", "estimate_bytes", "BasisSpec", "Compositions", "FirstPassStats", "SecondPassStats",
    "compositions", "first_pass", "second_pass", "BASIS_FORMAT", "Basis",
]

"""The one rule for whether a basis describes a model: every analysis, view and monitor asks it.

* the basis' ``k`` tokens must be ids of the model's vocabulary;
* the basis must come from the model's tokenizer: where both record one, their fingerprints
  must agree; where either is unknown the check is impossible and a warning says so;
* the vocabulary sizes must agree, except that a real model's embedding may be padded beyond
  the tokenizer (Pythia: 50,277 tokens, 50,304 rows) when the tokenizers are known to agree;
  a token-space model (the toy model) has no padding: its |V| must equal the basis' |V|;
* a token-space model must see windows as long as the basis' (its context ``n_ctx`` >= T).
"""

from __future__ import annotations

import warnings

from ..basis import Basis
from ..errors import LeadTermError, require
from ..models import ModelAdapter


def check_compatible(ad: ModelAdapter, basis: Basis) -> None:
    """Raise a one-line :class:`LeadTermError` when ``basis`` does not describe ``ad`` (module docstring)."""
    require(isinstance(basis, Basis), f"expected a tl_leadterm Basis, got {type(basis).__name__}; load one with Basis.load")
    require(basis.k <= ad.d_vocab,
            f"the basis has k={basis.k} tokens but the model's vocabulary has only {ad.d_vocab}; "
            f"rebuild the basis with {{top_k}} {ad.d_vocab} or less using the model's tokenizer")
    b_id = basis.tokenizer_identity.get("fingerprint") if basis.tokenizer_json else None
    m_id = ad.tokenizer.identity.get("fingerprint") if ad.tokenizer is not None else None
    if b_id and m_id and b_id != m_id:
        raise LeadTermError(
            f"the basis was built with tokenizer {basis.tokenizer_identity.get('name')!r} (fingerprint {b_id}) but the model "
            f"{ad.name!r} uses {ad.tokenizer.identity.get('name')!r} (fingerprint {m_id}); rebuild the basis with "
            f"{{tokenizer}} set to the model's tokenizer")
    same_tok = bool(b_id and m_id and b_id == m_id)
    if basis.vocab_size != ad.d_vocab:
        padded = same_tok and basis.vocab_size < ad.d_vocab and not ad.token_space
        require(padded,
                f"the basis was built for a vocabulary of {basis.vocab_size} tokens but the model has {ad.d_vocab}; "
                f"rebuild the basis with the model's tokenizer and {{vocab_size}} {ad.d_vocab}")
    require(int(basis.token_ids.max()) < ad.d_vocab,
            f"basis token id {int(basis.token_ids.max())} is outside the model's vocabulary ({ad.d_vocab}); rebuild the basis with the model's tokenizer")
    if ad.token_space:
        n_ctx = int(ad.model.cfg.n_ctx)
        require(basis.seq_len <= n_ctx,
                f"the basis has seq_len={basis.seq_len} but the model's context is {n_ctx}; "
                f"build the basis with {{seq_len}} {n_ctx} or less")
    if not same_tok:
        missing = "the basis" if not b_id else f"the model {ad.name!r}"
        warnings.warn(f"{missing} records no tokenizer, so it cannot be checked that the basis was built with the model's "
                      "tokenizer; only the vocabulary size was checked", stacklevel=3)

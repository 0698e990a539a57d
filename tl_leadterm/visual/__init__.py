"""Seeing it: circuitsvis views (:mod:`.views`), attention next to the leading term's prediction
(:mod:`.attention`), and the association explorer (:mod:`.explorer`)."""

from .attention import (
    OUTSIDE_MARK, AttentionComparison, compare_attention, fit_residual, fit_scale, leading_term_scores,
    predicted_pattern,
)
from .explorer import (
    association_sources, association_table, association_view, associations, residual_view, resolve_token,
)
from .views import CVView, circuitsvis_bundle

__all__ = ["OUTSIDE_MARK", "AttentionComparison", "compare_attention", "fit_residual", "fit_scale",
           "leading_term_scores", "predicted_pattern", "association_sources", "association_table",
           "association_view", "associations", "residual_view", "resolve_token", "CVView", "circuitsvis_bundle"]

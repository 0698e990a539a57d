"""Analysis stage: model weights and representations against the basis; one tidy table per call.

One module per job:

* :mod:`.table`: the row schema (``checkpoint, layer, head, site, measure, value, target,
  detail, extension``) and writing tables;
* :mod:`.factored` and :mod:`.measures`: the similarity algebra (a factored matrix as a
  value, dense references, prepared targets, least-squares projection);
* :mod:`.compat`: the one rule for whether a basis describes a model;
* :mod:`.toy`: :func:`analyze_toy` (projections and residuals of the toy weights);
* :mod:`.model`: :func:`analyze_model` (THEORY.md §5 and the token-space circuits);
* :mod:`.residual` and :mod:`.heads`: projection modulo row offsets and the residual beyond the
  leading term, per head and site, and :func:`rank_heads` (by signed cosine and percentile);
* :mod:`.geometry`: the model's outer factors of every site (E, U, attention inputs);
* :mod:`.lenses`: the registry of lenses (weights, update, gradient) and :func:`head_gradients`;
* :mod:`.chance`: signed fits of a site from d x d Gram matrices and their null distributions;
* :mod:`.findings`: :func:`retention` per layer and the per-site :func:`summary` the report states;
* :mod:`.circuit`: :func:`fit_circuit` for any token-space matrix (tensor, ``FactoredMatrix``, ``Factored``);
* :mod:`.sweep`: :func:`analyze` (either of the two) and :func:`sweep` over checkpoints;
* :mod:`.causal`: :func:`causal_check`;
* :mod:`.quick`: :func:`quick_measures` for training monitors.
"""

from .causal import causal_check, head_edit_directions, weight_delta
from .compat import check_compatible
from .factored import Factored
from .measures import (
    Family, Projection, Target, Targets, cka_dense, cka_lowrank, cov_cosine_dense, cov_cosine_lowrank, fro_cos,
    frob_cosine_lowrank, project, projection, row_normalise, similarities,
)
from .heads import head_fit, head_matrix, rank_heads
from .circuit import fit_circuit, measure_representations
from .findings import retention, summary
from .lenses import LENSES, head_gradients
from .model import analyze_model
from .residual import ResidualFit
from .quick import quick_measures
from .sweep import analyze, parse_checkpoints, sweep
from .table import COLUMNS, write_results, write_table
from .toy import analyze_toy, toy_atoms

__all__ = [
    "causal_check", "head_edit_directions", "weight_delta", "check_compatible", "Factored", "Family", "Projection",
    "Target", "Targets", "cka_dense", "cka_lowrank", "cov_cosine_dense", "cov_cosine_lowrank", "fro_cos",
    "frob_cosine_lowrank", "project", "projection", "row_normalise", "similarities", "analyze_model",
    "quick_measures", "rank_heads", "fit_circuit", "measure_representations", "retention", "summary", "LENSES", "head_gradients", "head_fit", "head_matrix", "ResidualFit", "analyze", "parse_checkpoints", "sweep", "COLUMNS", "write_results", "write_table", "analyze_toy", "toy_atoms",
]

"""THEORY.md §2-3 and §5 in code: every fact of the theory is defined here once and asked by every other module.

* :data:`TERMS`: the basis tensors (file name, symbol, orientation rows x cols, definition);
* :data:`LEADING`: each toy weight, its leading term, its order in η and the constant in
  front of it after ``s`` steps of gradient descent (:func:`leading_coefficient`);
  :data:`OV_PRODUCT` is the value-output product ``V·W_O`` whose leading term is Ḡ = M B̄;
* :data:`SITES`: the registry of real-model sites (§5, and the token-space circuits that go
  beyond the paper): each one entry with its targets and how its matrix is built
  (:data:`GEOMETRY`, :data:`CIRCUIT_WEIGHTS`); :func:`site` looks one up;
* toy weight names (``"W_O"``, ``"V.0"``, ``"W.1"``, ``"P.2"``): :func:`parse_weight`,
  :func:`weight_name`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import LeadTermError


@dataclass(frozen=True)
class Term:
    """A basis tensor (THEORY.md §2-3): ``name`` is its tensor name in basis files."""

    name: str
    symbol: str
    rows: str
    cols: str
    definition: str
    cols_phrase: str = ""  # how the explorer names the columns (default: ``cols``)

    @property
    def orientation(self) -> tuple[str, str]:
        return self.rows, self.cols

    @property
    def columns(self) -> str:
        return self.cols_phrase or self.cols


TERMS: dict[str, Term] = {t.name: t for t in (
    Term("bigram", "B̄", "current", "next", "(1/n) Σ_t x_tᵀ r_t"),
    Term("context", "Φ̄", "next", "context", "(1/n) Σ_t r_tᵀ c_t"),
    Term("interchange", "ΣB̄", "next", "next", "B̄ᵀ B̄", cols_phrase="interchangeable next"),
    Term("value", "M", "context", "current", "(B̄ Φ̄)ᵀ = Φ̄ᵀ B̄ᵀ"),
    Term("value_output", "Ḡ", "context", "next", "M B̄ = Φ̄ᵀ ΣB̄"),
    Term("key_query", "Q̄", "query", "key", "(1/n) Σ_t Σ_k x_tᵀ g_t[k] x_k"),
    Term("position", "p̄", "offset δ", "", "(1/n) Σ_t g_t[t-δ]"),
)}
#: the k x k basis matrices, in file order
MATRIX_NAMES: tuple[str, ...] = tuple(n for n in TERMS if n != "position")
#: every tensor of a basis file
TENSOR_NAMES: tuple[str, ...] = MATRIX_NAMES + ("position", "token_ids")


def symbol(name: str) -> str:
    return TERMS[name].symbol


# ---------------------------------------------------------------------------
# leading terms of the toy model's weights (THEORY.md §3)
# ---------------------------------------------------------------------------
def _quartic(steps: int, lr: float) -> float:
    return lr ** 4 * sum(k * k * (k - 1) / 2 for k in range(steps))


@dataclass(frozen=True)
class Leading:
    """A toy weight and its leading term: ``weight ≈ coefficient(steps, lr) · basis[term]``."""

    weight: str          # "W_O", "V", "W", "P" (or "V·W_O")
    term: str            # basis tensor name
    order: int           # power of η
    constant: str        # the constant, as written in THEORY.md
    _coef: Callable[[int, float], float]

    def coefficient(self, steps: int, lr: float) -> float:
        return self._coef(int(steps), float(lr))

    @property
    def symbol(self) -> str:
        return TERMS[self.term].symbol


LEADING: dict[str, Leading] = {t.weight: t for t in (
    Leading("W_O", "bigram", 1, "η s", lambda s, eta: eta * s),
    Leading("V", "value", 2, "η² s(s-1)/2", lambda s, eta: eta ** 2 * s * (s - 1) / 2),
    Leading("W", "key_query", 4, "η⁴ Σ_{k<s} k²(k-1)/2", _quartic),
    Leading("P", "position", 4, "η⁴ Σ_{k<s} k²(k-1)/2", _quartic),
)}
#: the toy model's value-output product V·W_O: its leading term is M B̄ = Ḡ (orders and constants multiply)
OV_PRODUCT = Leading("V·W_O", "value_output", LEADING["V"].order + LEADING["W_O"].order, "η³ s² (s-1)/2",
                     lambda s, eta: LEADING["V"].coefficient(s, eta) * LEADING["W_O"].coefficient(s, eta))


def leading(weight: str) -> Leading:
    """The leading term of toy weight ``weight`` (``"W_O"``, ``"V"``, ``"W.1"``, ``"V.0·W_O"`` ...)."""
    if weight.endswith("·W_O"):
        return OV_PRODUCT
    base, _ = parse_weight(weight)
    return LEADING[base]


def leading_coefficient(weight: str, steps: int, lr: float) -> float:
    """The constant in front of a toy weight's leading term (THEORY.md §3).

    ``W_O``: η s;  ``V``: η² s(s-1)/2;  ``W`` and ``P``: η⁴ Σ_{k<s} k²(k-1)/2.
    """
    return leading(weight).coefficient(steps, lr)


# ---------------------------------------------------------------------------
# toy weight names
# ---------------------------------------------------------------------------
def parse_weight(name: str) -> tuple[str, int | None]:
    """``"W_O"`` → ``("W_O", None)``; ``"V.1"`` → ``("V", 1)``; a bare ``"V"`` → ``("V", None)``."""
    base, dot, layer = str(name).partition(".")
    if base not in LEADING or (dot and not layer.isdigit()) or (base == "W_O" and dot):
        raise LeadTermError(f"unknown toy weight {name!r}; choose W_O, V.l, W.l or P.l")
    return base, (int(layer) if dot else None)


def weight_name(base: str, layer: int | None) -> str:
    """The inverse of :func:`parse_weight` (the tensor name in ``toy.safetensors``)."""
    return base if layer is None else f"{base}.{layer}"


# ---------------------------------------------------------------------------
# real models (THEORY.md §5) and the token-space circuits beyond the paper
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    """One real-model site (THEORY.md §5, and the token-space circuits beyond the paper): the one registry entry.

    ``target`` is the site's leading term; ``targets`` every basis matrix it is fitted against
    (the first is ``target``; ``model:<t>`` variants are added by the analysis, :data:`MODEL_PREFIX`).
    A site with a ``circuit`` is a per-head matrix ``X = L P R``: ``P`` the head's product of weights
    (``"qk"``: ``W_Q W_Kᵀ``, ``"ov"``: ``W_V W_O``), ``L``/``R`` read through the model's geometry,
    named by ``left``/``right`` (:data:`GEOMETRY`).  ``fit``: the per-head projection modulo row offsets
    and its residual are computed (``extension`` rows); ``layer_wise``: one matrix per layer.
    A site without a circuit is a representation (``resid_*``: ``H`` per layer) or the direct path ``E U``.
    """

    name: str
    target: str
    extension: bool
    description: str
    circuit: str = ""        # "qk" | "ov" | "" (no head matrix)
    left: str = ""           # GEOMETRY key of L (k x d)
    right: str = ""          # GEOMETRY key of R (d x k)
    fit: bool = False        # per-head projection and residual (module analysis.heads)
    extra_targets: tuple[str, ...] = ()

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.target,) + self.extra_targets

    @property
    def per_head(self) -> bool:
        return bool(self.circuit)


#: how a site's outer factors are read from the model (``L`` rows, ``R`` columns, over the k basis tokens)
GEOMETRY: dict[str, str] = {
    "E": "W_E[token_ids] (k x d_model): the embeddings",
    "E.T": "W_E[token_ids]ᵀ (d_model x k)",
    "U": "W_U[:, token_ids] (d_model x k): the unembedding",
    "A": "the attention input of layer l of each basis token run alone (k x d_model); ᵀ on the right",
    "A.T": "the attention input, transposed (d_model x k)",
    "H": "resid_pre of layer l of each basis token run alone (k x d_model)",
    "H.T": "resid_pre, transposed (d_model x k)",
}
#: a target read through the model's own geometry: for X = L P R, ``model:T`` is (L Lᵀ) T (Rᵀ R)
MODEL_PREFIX = "model:"
#: the product of weights of each circuit, as TransformerLens names the factors
CIRCUIT_WEIGHTS: dict[str, tuple[str, str]] = {"qk": ("W_Q", "W_K"), "ov": ("W_V", "W_O")}

SITES: dict[str, Site] = {s.name: s for s in (
    Site("resid_pre", "value", False, "representations H of each token run alone, before layer l"),
    Site("resid_mid", "value", False, "H after the attention half of layer l"),
    Site("resid_post", "value", False, "H after layer l"),
    Site("key_query", "key_query", False, "(A W_Q)(A W_K)ᵀ with A the attention input (query x key)",
         circuit="qk", left="A", right="A.T", fit=True),
    Site("key_query_resid", "key_query", False, "(H W_Q)(H W_K)ᵀ with H = resid_pre (THEORY.md §5 to the letter)",
         circuit="qk", left="H", right="H.T"),
    Site("circuit_qk", "key_query", True, "E W_Q W_Kᵀ Eᵀ, the full QK circuit (query x key)",
         circuit="qk", left="E", right="E.T", fit=True),
    Site("circuit_ov", "value_output", True, "E W_V W_O U, the full OV circuit (source x output logit)",
         circuit="ov", left="E", right="U", fit=True, extra_targets=("context.T", "bigram")),
    Site("circuit_ov_embed", "value", True, "E W_V W_O Eᵀ (context x current)",
         circuit="ov", left="E", right="E.T", fit=True),
    Site("direct_path", "bigram", True, "E U, the direct path (current x next)", left="E", right="U"),
)}


@dataclass(frozen=True)
class Lens:
    """Which d x d matrix of a head a site reads (:mod:`tl_leadterm.analysis.lenses` computes it).

    ``null``: how its chance level is drawn (``"product"``: Gaussian factors of the same inner size;
    ``"dense"``: a Gaussian d x d matrix); ``residuals``: the k x k residual fit is run under this lens."""

    name: str
    description: str
    null: str
    residuals: bool


#: the lenses, one entry each: a new lens is one entry here and its factors in analysis.lenses
LENSES: dict[str, Lens] = {x.name: x for x in (
    Lens("weights", "the head's product of weights P_t", "product", True),
    Lens("update", "P_t - P_ref, the change since a reference checkpoint", "product", True),
    Lens("gradient", "-dL/dP, the loss gradient with P a free d x d matrix", "dense", False),
)}
LENS_NAMES: tuple[str, ...] = tuple(LENSES)


def site(name: str) -> Site:
    """The registry entry of ``name``; an unknown site is a one-line error naming the known ones."""
    s = SITES.get(str(name))
    if s is None:
        raise LeadTermError(f"unknown site {name!r}; choose one of {', '.join(SITES)}")
    return s


def parse_sites(names) -> tuple[str, ...]:
    """A comma list or sequence of site names, checked against the registry (order of the registry kept)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    want = {site(n).name for n in names}
    if not want:
        raise LeadTermError("{sites} is empty; list sites such as circuit_ov,key_query")
    return tuple(n for n in SITES if n in want)


def target_matrix_name(target: str) -> tuple[str, bool, bool]:
    """``"model:context.T"`` → ``("context", True, True)``: basis tensor, transposed, read through the model."""
    through = target.startswith(MODEL_PREFIX)
    base = target[len(MODEL_PREFIX):] if through else target
    transposed = base.endswith(".T")
    base = base[:-2] if transposed else base
    if base not in MATRIX_NAMES:
        raise LeadTermError(f"unknown target {target!r}; choose a basis matrix ({', '.join(MATRIX_NAMES)}), "
                            f"optionally with .T, optionally prefixed {MODEL_PREFIX}")
    return base, transposed, through


#: a head's two circuits and the basis term each one's leading term is: QK (W_Q W_Kᵀ) → Q̄, OV (W_V W_O) → Ḡ
CIRCUITS: dict[str, str] = {"qk": LEADING["W"].term, "ov": OV_PRODUCT.term}

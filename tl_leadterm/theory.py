"""THEORY.md §2-3 and §5 in code: every fact of the theory is defined here once and asked by every other module.

* :data:`TERMS`: the basis tensors (file name, symbol, orientation rows x cols, definition);
* :data:`LEADING`: each toy weight, its leading term, its order in η and the constant in
  front of it after ``s`` steps of gradient descent (:func:`leading_coefficient`);
  :data:`OV_PRODUCT` is the value-output product ``V·W_O`` whose leading term is Ḡ = M B̄;
* :data:`SITES`: the registry of real-model sites (§5, and the token-space circuits that go
  beyond the paper): each one entry with its targets and how its matrix is built
  (:data:`GEOMETRY`, :data:`CIRCUIT_WEIGHTS`); :func:`site` looks one up;
* toy weight names (``"W_O"``, ``"V.0"``, ``"W.1"``, ``"P.2"``): :func:`parse_weight`,
  :func:`weight_name`;
* the one key scheme of measured things (``site/L<layer>/H<head>/measure``): :func:`measure_key`,
  :func:`parse_key`, and :class:`Keyed` (old keys as deprecated aliases).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Callable

from .errors import LeadTermError
from .params import check


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
    #: a constant added to a row changes nothing the model outputs (softmax follows: logits for ``W_O``, scores
    #: for ``W`` and ``P``), so the weight is compared after centring its rows; ``V`` feeds ``W_O`` and is not
    centred: bool = True

    def coefficient(self, steps: int, lr: float) -> float:
        """The constant after ``steps`` steps of size ``lr`` (both checked: :func:`tl_leadterm.params.check`)."""
        return self._coef(check("steps", steps), check("lr", lr))

    @property
    def symbol(self) -> str:
        return TERMS[self.term].symbol


LEADING: dict[str, Leading] = {t.weight: t for t in (
    Leading("W_O", "bigram", 1, "η s", lambda s, eta: eta * s),
    Leading("V", "value", 2, "η² s(s-1)/2", lambda s, eta: eta ** 2 * s * (s - 1) / 2, centred=False),
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

    ``W_O``: η s;  ``V``: η² s(s-1)/2;  ``W`` and ``P``: η⁴ Σ_{k<s} k²(k-1)/2.  ``steps`` is an integer >= 0 and
    ``lr`` a positive number (numpy scalars too); anything else is a one-line error.
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
    and its residual are computed (``extension`` rows); ``default``: analysed when no ``sites`` are given
    (every per-head site can also be named in the causal check, :func:`tl_leadterm.analysis.causal_check`).
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
    default: bool = True     # analysed unless ``sites`` names a subset (False: only when asked for)
    #: the site written out densely, for tests: ``dense(m)`` with ``m`` the matrices of one layer and head by name
    #: (``E`` k x d, ``U`` d x k, ``A``/``H`` k x d, ``W_Q``/``W_K``/``W_V`` d x d_head, ``W_O`` d_head x d; ``resid_*``)
    dense: Callable[[dict], object] | None = field(default=None, compare=False, repr=False)

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.target,) + self.extra_targets

    @property
    def per_head(self) -> bool:
        return bool(self.circuit)

    @property
    def representations(self) -> frozenset[str]:
        """The per-layer representations of the basis tokens the site reads (``resid_pre``, ``attn_in`` ...)."""
        if not self.circuit and self.name.startswith("resid_"):
            return frozenset({self.name})
        return frozenset(GEOMETRY_REPS[k.split(".")[0]] for k in (self.left, self.right) if k.split(".")[0] in GEOMETRY_REPS)


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
#: the geometry keys read from the model's representations of each basis token run alone
GEOMETRY_REPS: dict[str, str] = {"A": "attn_in", "H": "resid_pre"}
#: a target read through the model's own geometry: for X = L P R, ``model:T`` is (L Lᵀ) T (Rᵀ R)
MODEL_PREFIX = "model:"
#: the product of weights of each circuit, as TransformerLens names the factors
CIRCUIT_WEIGHTS: dict[str, tuple[str, str]] = {"qk": ("W_Q", "W_K"), "ov": ("W_V", "W_O")}

SITES: dict[str, Site] = {s.name: s for s in (
    Site("resid_pre", "value", False, "representations H of each token run alone, before layer l",
         dense=lambda m: m["resid_pre"]),
    Site("resid_mid", "value", False, "H after the attention half of layer l", dense=lambda m: m["resid_mid"]),
    Site("resid_post", "value", False, "H after layer l", dense=lambda m: m["resid_post"]),
    Site("key_query", "key_query", False, "(A W_Q)(A W_K)ᵀ with A the attention input (query x key)",
         circuit="qk", left="A", right="A.T", fit=True, dense=lambda m: (m["A"] @ m["W_Q"]) @ (m["A"] @ m["W_K"]).T),
    Site("key_query_resid", "key_query", False, "(H W_Q)(H W_K)ᵀ with H = resid_pre (THEORY.md §5 to the letter)",
         circuit="qk", left="H", right="H.T", dense=lambda m: (m["H"] @ m["W_Q"]) @ (m["H"] @ m["W_K"]).T),
    Site("circuit_qk", "key_query", True, "E W_Q W_Kᵀ Eᵀ, the full QK circuit (query x key)",
         circuit="qk", left="E", right="E.T", fit=True, dense=lambda m: m["E"] @ m["W_Q"] @ m["W_K"].T @ m["E"].T),
    Site("circuit_ov", "value_output", True, "E W_V W_O U, the full OV circuit (source x output logit)",
         circuit="ov", left="E", right="U", fit=True, extra_targets=("context.T", "bigram"),
         dense=lambda m: m["E"] @ m["W_V"] @ m["W_O"] @ m["U"]),
    Site("circuit_ov_embed", "value", True, "E W_V W_O Eᵀ (context x current)",
         circuit="ov", left="E", right="E.T", fit=True, dense=lambda m: m["E"] @ m["W_V"] @ m["W_O"] @ m["E"].T),
    Site("attn_ov", "value_output", True, "A W_V W_O U, the OV circuit from the attention input (source x output "
         "logit; the causal check's OV site)", circuit="ov", left="A", right="U", default=False,
         dense=lambda m: m["A"] @ m["W_V"] @ m["W_O"] @ m["U"]),
    Site("direct_path", "bigram", True, "E U, the direct path (current x next)", left="E", right="U",
         dense=lambda m: m["E"] @ m["U"]),
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


# ---------------------------------------------------------------------------
# keys: the one name of a measured thing, shared by the table, the monitor, quick measures and the causal check
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    """What a key names: a site (registry or toy weight), its layer and head, and a measure (each optional)."""

    site: str
    layer: int | None = None
    head: int | None = None
    measure: str = ""

    def __str__(self) -> str:
        return measure_key(self.site, self.layer, self.head, self.measure)


_KEY = re.compile(r"^(?P<site>[A-Za-z_][A-Za-z0-9_]*)(?:/L(?P<layer>\d+)(?:/H(?P<head>\d+))?)?"
                  r"(?:/(?![LH]\d*$)(?P<measure>[A-Za-z_][A-Za-z0-9_]*))?$")


def measure_key(site: str, layer: int | None = None, head: int | None = None, measure: str = "") -> str:
    """The one key scheme: ``site[/L<layer>][/H<head>][/measure]``.

    The table's ``site``, ``layer``, ``head`` (and ``measure``) columns, the monitor's records
    (``key_query_resid/L0/H1``, ``resid_pre/L0``, toy ``V/L0``, ``W_O``), the quick measures
    (``key_query/L0/cov_cosine``) and the causal check's sites all use it.  No head: the layer's head average
    (or a measure of the whole layer); no layer: a model-wide site.  :func:`parse_key` is its inverse."""
    if head is not None and layer is None:
        raise LeadTermError(f"a key with a head needs a layer (site {site!r}, head {head})")
    parts = [str(site)]
    if layer is not None:
        parts.append(f"L{int(layer)}")
    if head is not None:
        parts.append(f"H{int(head)}")
    if measure:
        parts.append(str(measure))
    return "/".join(parts)


def parse_key(key: str) -> Key:
    """``"key_query_resid/L0/H1"`` → ``Key("key_query_resid", 0, 1, "")``; an old monitor or quick-measure key
    (``"qk.0.1"``, ``"L0/key_query/cov_cosine"``) is read through :func:`legacy_key`."""
    m = _KEY.match(legacy_key(str(key)) or str(key))
    if m is None:
        raise LeadTermError(f"{key!r} is not a tl_leadterm key (site[/L<layer>][/H<head>][/measure])")
    layer, head = m.group("layer"), m.group("head")
    return Key(m.group("site"), None if layer is None else int(layer), None if head is None else int(head),
               m.group("measure") or "")


#: keys of earlier releases → the key scheme (monitor: ``resid.l``, ``qk.l``, ``qk.l.h``, toy ``V.l``; quick
#: measures: ``L{l}/{site}/{measure}``; causal check: ``qk``, ``ov``)
_LEGACY = (
    (re.compile(r"^resid\.(\d+)$"), r"resid_pre/L\1"),
    (re.compile(r"^qk\.(\d+)$"), r"key_query_resid/L\1"),
    (re.compile(r"^qk\.(\d+)\.(\d+)$"), r"key_query_resid/L\1/H\2"),
    (re.compile(rf"^({'|'.join(w for w in LEADING if w != 'W_O')})\.(\d+)$"), r"\1/L\2"),   # toy weights, parse_weight
    (re.compile(r"^L(\d+)/([A-Za-z_][A-Za-z0-9_]*)/([A-Za-z_][A-Za-z0-9_]*)$"), r"\2/L\1/\3"),
    (re.compile(r"^qk$"), "key_query"),
    (re.compile(r"^ov$"), "attn_ov"),
)


def legacy_key(key: str) -> str | None:
    """The current key of an old one (:data:`_LEGACY`), or None when ``key`` is not an old key."""
    for pattern, repl in _LEGACY:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return None


def current_keys(values: dict) -> "Keyed":
    """``values`` with every key of an earlier release replaced by its current key (:func:`legacy_key`)."""
    return Keyed({legacy_key(k) or k: v for k, v in values.items()})


class Keyed(dict):
    """A dict of measures by key that still answers to the keys of earlier releases, with a DeprecationWarning
    (``record["similarity"]["qk.0.1"]`` reads ``record["similarity"]["key_query_resid/L0/H1"]``).  It iterates,
    compares and serialises as the plain dict of current keys."""

    def __missing__(self, key):
        new = legacy_key(key) if isinstance(key, str) else None
        if new is None or not dict.__contains__(self, new):
            raise KeyError(key)
        warnings.warn(f"key {key!r} is now {new!r} (one key scheme: site/L<layer>/H<head>); the old key will be "
                      "removed in a later release", DeprecationWarning, stacklevel=2)
        return dict.__getitem__(self, new)

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key) -> bool:
        if dict.__contains__(self, key):
            return True
        new = legacy_key(key) if isinstance(key, str) else None
        return new is not None and dict.__contains__(self, new)

"""Configuration dataclasses: the one source of every stage's parameters.

Each stage's settings are one dataclass (:class:`CorpusConfig`, :class:`BasisConfig`,
:class:`TrainConfig`, :class:`AnalysisConfig`, :class:`MonitorConfig`, and the main job's
:class:`DemoConfig`).  A field is declared once with :func:`param`: its default, its help text
(``%(default)s`` stands for the default), its check (a range of :data:`tl_leadterm.params.RANGES`,
a list of choices, or a named validator for free-form values such as paths), and whether it has a
command-line flag.  From that one declaration

- ``cfg.validate()`` checks every field (one-line :class:`~tl_leadterm.errors.LeadTermError` naming the
  field as ``{name}``, which the CLI shows as its flag);
- :func:`add_arguments` adds the argparse options of a command (flag ``--field-name``, or
  :data:`FLAG_NAMES`; a boolean that defaults to True gets ``--no-field-name``);
- :func:`from_args` builds (and validates) the config from parsed arguments;
- :func:`param_names` lists the parameter names messages may use (:data:`tl_leadterm.errors.PARAMS`).

The library functions keep their keyword arguments; a config's :meth:`Config.kwargs` gives them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import LeadTermError, register_params, require
from .params import RANGES, check
from .theory import LENS_NAMES as _THEORY_LENS_NAMES
from .theory import SITES, parse_sites

#: parameters whose flag is not ``--`` + the name with ``-`` for ``_``
FLAG_NAMES = {"source": "--corpus", "every": "--log-every"}
#: precisions of the basis and the toy model
DTYPE_NAMES = ("float64", "float32")
#: token types of a raw token stream (tl_leadterm.corpus reads them)
TOKEN_DTYPE_NAMES = ("uint16", "uint32", "int32", "int64")
#: the lenses of the analysis (tl_leadterm.analysis.LENSES holds what each one computes; a test keeps both equal)
LENS_NAMES = _THEORY_LENS_NAMES   # the lens registry (theory.LENSES), named once
BACKENDS = ("auto", "bridge", "hooked")
BASIS_MODES = ("auto", "exact", "merge-other")
PACKS = ("join", "cut")
DEMO_TEXT = "sue saw a bird. the bird flew up in the sky. the big fish swam in the pond. dad drove the red car."
DEMO_TOKENS = ("bird", "fish", "car")
#: the demo's checkpoints (those below its ``steps``, and the last)
CHECKPOINT_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def flag_of(name: str) -> str:
    """The command-line flag of parameter ``name``."""
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


# ---- validators of free-form values: (name, value) -> None, a one-line error naming {name} ----

def text(hint: str = "") -> Callable[[str, Any], None]:
    """A non-empty string (``hint`` completes the message)."""
    def _check(name, value):
        require(isinstance(value, str), f"{{{name}}} must be a string, got {type(value).__name__}")
        require(bool(value.strip()), f"{{{name}}} is empty; {hint or 'give a value'}")
    _check.__name__ = "text"
    return _check


def path(name: str, value) -> None:
    """A file or folder path (``str`` or ``os.PathLike``), not empty."""
    require(isinstance(value, (str, os.PathLike)) and str(value).strip() != "",
            f"{{{name}}} must be a path, got {value!r}")


def tokenizer(name: str, value) -> None:
    """A tokenizer's name or path, or a loaded :class:`~tl_leadterm.tokenization.Tokenizer`."""
    if isinstance(value, (str, os.PathLike)):
        return path(name, value)
    require(hasattr(value, "encode"), f"{{{name}}} must be 'words', a tokenizer file, folder or hub name, or a "
                                      f"Tokenizer, got {type(value).__name__}")


def token_ids(name: str, value) -> None:
    """A JSON file of token ids (CLI) or a sequence of token ids (API)."""
    if isinstance(value, (str, os.PathLike)):
        return path(name, value)
    require(hasattr(value, "__len__") and hasattr(value, "__iter__"),
            f"{{{name}}} must be a list of token ids or a JSON file of one, got {type(value).__name__}")


def tokens(name: str, value) -> None:
    """Distinct, non-empty token strings, at least one."""
    require(not isinstance(value, str) and all(isinstance(t, str) and t for t in value),
            f"{{{name}}} must be a list of tokens, e.g. bird,fish")
    require(len(value) > 0, f"{{{name}}} must list at least one token, e.g. bird,fish")
    twice = [t for i, t in enumerate(value) if t in value[:i]]
    require(not twice, f"{{{name}}} lists {(twice or [''])[0]!r} more than once; give each token once")


def sites(name: str, value) -> tuple[str, ...]:
    """Site names of the registry (:data:`tl_leadterm.theory.SITES`), in its order."""
    return parse_sites(value)


def comma_list(s: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")`` (a flag's comma list)."""
    return tuple(t.strip() for t in str(s).split(",") if t.strip())


# ---- the declaration of a parameter ----

@dataclass(frozen=True)
class Param:
    """How one config field is documented, checked and set from the command line."""

    help: str
    range: str | None = None                 # key of params.RANGES
    choices: tuple | None = None             # allowed values (of each element, with many=True)
    check: Callable[[str, Any], Any] | None = None   # validator of a free-form value (may return it normalised)
    optional: bool = False                   # None is allowed (and skips the check)
    many: bool = False                       # a sequence of choices (a comma list on the command line)
    parse: Callable[[str], Any] | None = None        # the flag's string -> the field's value
    metavar: str | None = None
    flag: str | None = None                  # default: flag_of(name), or --no-NAME for a bool that defaults to True
    cli: bool = True                         # has a command-line flag

    def kind(self) -> type | None:
        return RANGES[self.range].kind if self.range else None


def param(default=MISSING, *, help: str, range: str | None = None, choices: Iterable | None = None,
          check: Callable | None = None, optional: bool = False, many: bool = False, parse: Callable | None = None,
          metavar: str | None = None, flag: str | None = None, cli: bool = True):
    """A dataclass field carrying its :class:`Param` (``range`` names a key of :data:`~tl_leadterm.params.RANGES`)."""
    if range is not None and range not in RANGES:
        raise KeyError(f"no range {range!r} in params.RANGES")
    meta = {"param": Param(help, range, tuple(choices) if choices is not None else None, check, optional, many, parse,
                           metavar, flag, cli)}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def spec(cls_or_cfg, name: str) -> Param:
    """The :class:`Param` of field ``name``."""
    return next(f.metadata["param"] for f in fields(cls_or_cfg) if f.name == name)


def check_value(name: str, p: Param, value):
    """``value`` checked against ``p`` (numbers come back as plain ``int``/``float``)."""
    if value is None and p.optional:
        return None
    if p.range is not None:
        return check(name, value, key=p.range)
    if p.choices is not None:
        items = tuple(value) if p.many and not isinstance(value, str) else comma_list(value) if p.many else (value,)
        for x in items:
            if x not in p.choices:
                shown = ", ".join(str(c) for c in p.choices)
                raise LeadTermError(f"unknown {name} {x!r}; choose {{{name}}} from {shown}" + (" (a comma list)" if p.many else ""))
        require(len(items) > 0, f"{{{name}}} is empty; give {' or '.join(str(c) for c in p.choices)}")
        return tuple(c for c in p.choices if c in items) if p.many else value
    out = p.check(name, value)
    return value if out is None else out


class Config:
    """Base of the configuration dataclasses: :meth:`validate` and :meth:`kwargs` from the fields' :class:`Param`."""

    def validate(self):
        """Check every field against its declaration, then the checks across fields; return ``self``.

        Numbers come back as plain Python numbers; comma lists as tuples."""
        for f in fields(self):
            p = f.metadata["param"]
            value = getattr(self, f.name)
            if p.parse is not None and isinstance(value, str):
                value = p.parse(value)
            object.__setattr__(self, f.name, check_value(f.name, p, value))
        self._check_together()
        return self

    def _check_together(self) -> None:
        """Checks that involve several fields (none by default)."""

    def kwargs(self, *names: str) -> dict:
        """``{field: value}`` of ``names`` (default: all fields), for a library call."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not names or f.name in names}


# ---- the stages ----

@dataclass
class CorpusConfig(Config):
    """Where the token windows come from and how text becomes tokens (:func:`tl_leadterm.corpus.load_corpus`)."""

    source: str | Path = param(
        help="builtin:stories (embedded), a .txt file or folder of .txt files, a .npy [n, T+1] token array, "
             "a token file read memory-mapped (a raw .bin stream, or a Megatron/GPT-NeoX indexed dataset "
             "PREFIX.idx + PREFIX.bin, as Pythia's Pile), or a Hugging Face dataset name/local dataset folder "
             "(read with datasets, streaming; prefix hf: to force)", check=path, metavar="SRC")
    seq_len: int = param(help="positions per window (windows hold T+1 tokens)", range="seq_len", metavar="T")
    tokenizer: str | None = param(
        None, help="'words' (the paper's word-level tokenizer, default for text), a tokenizer.json file, "
                   "a local tokenizer directory, or a hub name such as EleutherAI/pythia-70m",
        check=tokenizer, optional=True, metavar="TOK")
    vocab_size: int | None = param(
        None, help="number of token ids |V| (required for .npy; default: the tokenizer's size; e.g. 50304 for Pythia)",
        range="vocab_size", optional=True, metavar="V")
    pack: str = param("join", choices=PACKS,
                      help="join: documents joined by end-of-text into consecutive windows (default); cut: each "
                           "document cut on its own, padding never counted")
    text_column: str = param("text", help="dataset column holding the text (default: %(default)s)",
                             check=text("give the dataset column holding the text"))
    split: str = param("train", help="dataset split (default: %(default)s)", check=text("give a dataset split, e.g. train"))
    max_docs: int | None = param(
        None, help="read at most N documents, N >= 1 (default: all; a warning says when the bound cut a dataset stream)",
        range="max_docs", optional=True, metavar="N")
    word_vocab_size: int | None = param(
        None, help="'words' tokenizer: keep at most N entries (2 specials + most frequent words)",
        range="word_vocab_size", optional=True, metavar="N")
    token_dtype: str = param("uint16", choices=TOKEN_DTYPE_NAMES,
                             help="token type of a raw .bin stream (default %(default)s; an indexed dataset records its own)")
    items: str | None = param(None, help="indexed dataset: use items A..B-1", check=text("give A:B"), optional=True,
                              metavar="A:B")
    pythia_steps: str | None = param(
        None, help="indexed dataset of Pythia's pre-shuffled Pile: the training sequences of steps A..B-1 "
                   "(step s = items s*1024 .. s*1024+1023, 2049 tokens each)",
        check=text("give A:B"), optional=True, metavar="A:B")
    encoding: str = param("utf-8", help="encoding of text files (default %(default)s); a file that is not valid text in it "
                                        "is refused", check=text("give a text encoding such as utf-8"), metavar="CODEC")
    word_min_count: int = param(1, help="'words' tokenizer: keep words seen at least N times (default %(default)s); "
                                        "others become <unk>", range="word_min_count", metavar="N")


@dataclass
class BasisConfig(Config):
    """Which tokens the basis covers and how it is accumulated (:func:`tl_leadterm.basis.compute_basis`)."""

    top_k: int | None = param(None, help="use the K most frequent tokens", range="top_k", optional=True, metavar="K")
    token_ids: Any = param(None, help="JSON list of token ids, in the order wanted", check=token_ids, optional=True,
                           metavar="IDS.json")
    mode: str = param("auto", choices=BASIS_MODES,
                      help="exact: products over the full vocabulary; merge-other: tokens outside K share one "
                           "class-average row (for large vocabularies); auto (default): exact when it fits in memory "
                           "and |V| <= 8192 (65536 on cuda), else merge-other with a warning")
    dtype: str = param("float64", choices=DTYPE_NAMES, help="accumulation and output precision (default %(default)s)")
    device: str | None = param(None, help="cpu (default) or cuda", check=text("give cpu or cuda"), optional=True)


@dataclass
class TrainConfig(Config):
    """The toy model and its plain gradient descent (:func:`tl_leadterm.toy.train_toy`)."""

    layers: int = param(1, help="number of attention layers", range="layers", metavar="L")
    lr: float = param(1.0, help="learning rate η", range="lr", metavar="ETA")
    steps: int = param(100, help="number of gradient steps", range="steps", metavar="S")
    batch_size: int | None = param(None, help="minibatch SGD with B windows per step", range="batch_size",
                                   optional=True, metavar="B")
    dtype: str = param("float64", choices=DTYPE_NAMES, help="parameter precision (default %(default)s)")
    device: str | None = param(None, help="cpu (default) or cuda", check=text("give cpu or cuda"), optional=True)
    seed: int = param(0, help="seed for minibatch order", range="seed", metavar="N")


@dataclass
class AnalysisConfig(Config):
    """What ``analyze``/``sweep`` compute (:func:`tl_leadterm.analysis.analyze_model`) and the causal check's settings."""

    dictionary: bool = param(
        False, choices=(False, True),
        help="project on a dictionary instead of each weight's own leading term: toy models on all basis "
             "matrices, their transposes, identity and ones; other models on Q̄, Q̄ᵀ, ΣB̄, M, Ḡ, Φ̄ᵀ, B̄, identity and ones")
    circuits: bool = param(True, choices=(False, True), help="skip the token-space circuit similarity rows")
    residuals: bool = param(
        True, choices=(False, True),
        help="skip the per-head projections modulo row offsets and the residual beyond the leading term "
             "(coef, explained, residual_norm, residual_pair, residual_sv; cost O(k² d_head) per head and site)")
    backend: str = param("auto", choices=BACKENDS,
                         help="TransformerLens API: bridge (TransformerBridge, TL 4.x), hooked (HookedTransformer); "
                              "auto picks by installed version")
    device: str | None = param(None, help="cpu (default) or cuda", check=text("give cpu or cuda"), optional=True)
    lens: tuple[str, ...] = param(
        ("weights",), choices=LENS_NAMES, many=True, parse=comma_list, metavar="LIST",
        help="comma list of lenses: weights (the heads' products of weights, default), update (the change "
             "since --reference), gradient (-dL/dP on --gradient-corpus windows)")
    reference: str | None = param(
        None, check=text("give first, previous, a label, a folder or stepN"), optional=True, metavar="REF",
        help="reference checkpoint of the update lens: first, previous (sweep), a checkpoint label, a local "
             "model directory or a Pythia revision (stepN of --model)")
    gradient_corpus: str | None = param(
        None, check=path, optional=True, metavar="SRC",
        help="text or token windows for the gradient lens (a .txt file/folder, .npy windows or a token file), "
             "tokenized with the model's tokenizer")
    gradient_windows: int = param(256, range="gradient_windows", metavar="N",
                                  help="windows of the basis' length T drawn (seeded) from --gradient-corpus "
                                       "(default %(default)s)")
    null_draws: int = param(200, range="null_draws", metavar="N",
                            help="random heads per fit group for the chance level (default %(default)s; 0 turns nulls off)")
    seed: int = param(0, range="seed", help="seed of the null draws and the gradient windows (default %(default)s)")
    sites: tuple[str, ...] | None = param(
        None, check=sites, optional=True, parse=comma_list, metavar="LIST",
        help="comma list of sites (default all but " + ", ".join(n for n, x in SITES.items() if not x.default)
             + "): " + ", ".join(SITES))
    retention_threshold: float = param(
        0.7, range="fraction", metavar="X",
        help="retention.csv: first checkpoint whose head-average signed cosine falls below X (default %(default)s)")
    top: int = param(5, range="top", cli=False, help="residual pairs reported per head and site")
    n_singular: int = param(3, range="n_singular", cli=False, help="singular directions of the residual reported")
    heldout: str | None = param(
        None, check=path, optional=True, metavar="SRC",
        help="held-out text (a .txt file/folder or .npy windows) for the causal check; tokenized with the model's tokenizer")
    heldout_windows: int = param(32, range="heldout_windows", metavar="N",
                                 help="use at most N held-out windows (default %(default)s)")
    seeds: int = param(5, range="seeds", metavar="N",
                       help="random-direction seeds for the causal check (default %(default)s)")

    def _check_together(self) -> None:
        require("update" not in self.lens or self.reference,
                "{lens} update needs {reference} (first, previous, a label, a folder or stepN)")
        require("gradient" in self.lens or not self.gradient_corpus,
                "{gradient_corpus} is used by {lens} gradient only; add gradient to {lens}")
        require("gradient" not in self.lens or self.gradient_corpus,
                "{lens} gradient needs {gradient_corpus} SRC (text or token windows)")


@dataclass
class MonitorConfig(Config):
    """What the training monitor logs and how often (:class:`tl_leadterm.monitor.TrainingMonitor`)."""

    every: int = param(100, range="every", metavar="N",
                       help="every N steps, log similarity to the leading terms to DIR/monitor.jsonl (needs the basis "
                            "of the corpus; computed once)")
    lr: float | None = param(None, range="lr", optional=True, cli=False,
                             help="the learning rate of full-batch gradient descent (the exact leading terms need it)")
    max_tokens: int | None = param(256, range="max_tokens", optional=True, cli=False,
                                   help="real models: use at most this many basis tokens")
    null_draws: int = param(100, range="null_draws", cli=False, help="random draws of the chance level (0: none)")
    seed: int = param(0, range="seed", cli=False, help="seed of the chance-level draws")


@dataclass
class DemoConfig(Config):
    """Settings of the main job (the fields are the ``tl-leadterm demo`` options)."""

    out: str | Path = param(check=path, metavar="DIR", help="output folder (report.html, plots/, analysis.csv, ...)")
    seq_len: int = param(32, range="seq_len", metavar="T", help="window length (default %(default)s)")
    layers: int = param(2, range="layers", metavar="L", help="toy-model layers (default %(default)s)")
    steps: int = param(40, range="demo_steps", metavar="S", help="training steps (default %(default)s)")
    lr: float = param(2.0, range="lr", metavar="ETA", help="learning rate (default %(default)s)")
    batch_size: int = param(128, range="batch_size_or_full", metavar="B",
                            help="windows per SGD step (default %(default)s; 0 = full batch)")
    seed: int = param(0, range="seed", metavar="N", help="seed (default %(default)s)")
    text: str = param(DEMO_TEXT, check=text("give a text for the attention views"), help="text for the attention views")
    tokens: tuple[str, ...] = param(DEMO_TOKENS, check=tokens, parse=comma_list, metavar="LIST",
                                    help="comma-separated tokens for the explorer (default %(default)s)")
    pythia_tokenizer: str | Path | None = param(
        None, check=path, optional=True, metavar="FILE",
        help="Pythia tokenizer.json for the Pythia-architecture section (random local model); default: "
             "../shared/data/gpt-neox-20b-tokenizer.json beside the checkout, skipped if absent")
    no_pythia: bool = param(False, choices=(False, True), help="skip the Pythia-architecture section")
    neox_steps: int = param(64, range="steps", metavar="S",
                            help="train a GPT-NeoX (Pythia architecture, word tokenizer) from random init for S steps, "
                                 "checkpoints on Pythia's schedule, and sweep them beyond the leading term "
                                 "(default %(default)s; 0 skips)")
    keep_checkpoints: bool = param(False, choices=(False, True),
                                   help="keep the GPT-NeoX checkpoints under DIR/neox_checkpoints/stepN/ (default: temporary)")
    null_draws: int = param(200, range="null_draws", metavar="N",
                            help="random heads per fit group for the chance level (default %(default)s; 0: none)")

    def _check_together(self) -> None:
        require(self.neox_steps > 0 or not self.keep_checkpoints,
                "{keep_checkpoints} needs GPT-NeoX checkpoints: set {neox_steps} >= 1")
        if not self.no_pythia and self.pythia_tokenizer is not None:
            from .io import input_path

            input_path(self.pythia_tokenizer, "{pythia_tokenizer}", "give the Pythia tokenizer.json or {no_pythia}")

    @property
    def checkpoint_steps(self) -> list[int]:
        """The training steps the demo analyses: :data:`CHECKPOINT_STEPS` below ``steps``, and ``steps``."""
        return sorted({s for s in CHECKPOINT_STEPS if s < self.steps} | {self.steps})


CONFIGS = (CorpusConfig, BasisConfig, TrainConfig, AnalysisConfig, MonitorConfig, DemoConfig)


def param_names() -> set[str]:
    """Every config field's name and every range's: the parameters a message may name as ``{name}``."""
    names = {f.name for c in CONFIGS for f in fields(c)}
    aliases = {f.metadata["param"].range for c in CONFIGS for f in fields(c)} - names   # ranges named for a use
    return names | {n for n in RANGES if n.islower()} - aliases


register_params(param_names())   # errors.PARAMS


# ---- the command line ----

def _flag(f: dataclasses.Field) -> str:
    p = f.metadata["param"]
    if p.flag:
        return p.flag
    return "--no-" + f.name.replace("_", "-") if f.default is True else flag_of(f.name)


def cli_flags(cls) -> dict[str, str]:
    """``{field: flag}`` of the fields of ``cls`` that have one."""
    return {f.name: _flag(f) for f in fields(cls) if f.metadata["param"].cli}


def add_arguments(parser, cls, *, include: Iterable[str] | None = None, exclude: Iterable[str] = (),
                  required: Iterable[str] = (), defaults: dict | None = None) -> None:
    """Add the options of the fields of ``cls`` (those with a flag; ``include``/``exclude`` select) to ``parser``.

    The option's dest is the field name; its type, choices and default come from the field.  ``required``: these
    must be given (fields without a default always must); ``defaults``: another default on this command (e.g. a
    flag that is off unless given)."""
    include = None if include is None else list(include)
    exclude, required, defaults = set(exclude), set(required), dict(defaults or {})
    by_name = {f.name: f for f in fields(cls)}
    unknown = (set(include or ()) | exclude | required | set(defaults)) - set(by_name)
    if unknown:
        raise KeyError(f"{cls.__name__} has no fields {sorted(unknown)}")
    for name in include if include is not None else list(by_name):
        f = by_name[name]
        p = f.metadata["param"]
        if name in exclude or not p.cli:
            continue
        default = defaults.get(name, f.default)
        kw: dict = {"dest": name, "help": p.help}
        if p.choices == (False, True):
            kw["action"] = "store_false" if f.default is True else "store_true"
            kw["help"] = p.help
            parser.add_argument(_flag(f), **kw)
            continue
        if name in required or (default is MISSING and name not in defaults):
            kw["required"] = True
        else:
            kw["default"] = ",".join(default) if isinstance(default, tuple) else default
        if p.range is not None:
            kw["type"] = p.kind()
        if p.choices is not None and not p.many:
            kw["choices"] = p.choices
        if p.metavar:
            kw["metavar"] = p.metavar
        parser.add_argument(_flag(f), **kw)


def from_args(cls, args: argparse.Namespace, **overrides):
    """``cls`` from parsed arguments (fields without a flag, or not on this command, keep their defaults;
    ``overrides`` win), validated."""
    kw = {}
    for f in fields(cls):
        if f.name in overrides:
            kw[f.name] = overrides[f.name]
        elif f.metadata["param"].cli and hasattr(args, f.name):
            kw[f.name] = getattr(args, f.name)
    return cls(**kw).validate()

"""The configuration dataclasses are the one source of parameters: every field is checked from its declaration,
every command-line flag is a field (or listed here as the command's own), and no range check is written twice."""

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest

from tl_leadterm import LeadTermError
from tl_leadterm import config as C
from tl_leadterm.cli import build_parser, main
from tl_leadterm.params import RANGES

PKG = Path(__file__).resolve().parents[1] / "tl_leadterm"
#: flags that set no stage parameter: where a command reads or writes, what it analyses, the sharded workflow
COMMAND_ONLY = {
    "basis": {"--out", "--shard", "--stats-out", "--pass2"},
    "merge": {"--stats", "--pass2", "--out"},
    "toy-train": {"--out", "--full-batch"},
    "analyze": {"--model", "--revision", "--basis", "--out"},
    "sweep": {"--model", "--checkpoints", "--basis", "--out"},
    "demo": set(),
    "report": {"--results", "--out", "--title", "--model", "--basis", "--text", "--tokens"},
}
#: what a valid config needs besides its defaults
BASE = {C.CorpusConfig: {"source": "builtin:stories", "seq_len": 8}, C.DemoConfig: {"out": "out/demo"}}
#: a value each free-form validator refuses
BAD_FREE = {"path": 123, "text": "  ", "tokenizer": 123, "token_ids": 123, "tokens": (), "sites": "bogus"}
#: fields checked by the registry they name (tl_leadterm.theory.parse_sites), with its message
DELEGATED = {"sites": "unknown site 'bogus'"}
FIELDS = [(cls, f) for cls in C.CONFIGS for f in dataclasses.fields(cls)]
IDS = [f"{cls.__name__}.{f.name}" for cls, f in FIELDS]


def _bad(f: dataclasses.Field):
    """A value outside field ``f``'s declaration."""
    p = f.metadata["param"]
    if p.range is not None:
        r = RANGES[p.range]
        return (r.lo - 1 if r.kind is int else -1.5) if r.lo is not None else "x"
    if p.choices is not None:
        return "no-such-choice"
    return BAD_FREE[getattr(p.check, "__name__", "")]


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("cls,f", FIELDS, ids=IDS)
def test_every_field_is_declared_with_a_check(cls, f):
    p = f.metadata.get("param")
    assert isinstance(p, C.Param), "declare the field with config.param(...)"
    assert p.help.strip()
    assert (p.range is not None) + (p.choices is not None) + (p.check is not None) == 1, "one range, choices or check"
    assert p.range is None or p.range in RANGES


@pytest.mark.parametrize("cls", C.CONFIGS, ids=lambda c: c.__name__)
def test_defaults_are_valid(cls):
    cfg = cls(**BASE.get(cls, {}))
    assert cfg.validate() is cfg


@pytest.mark.parametrize("cls,f", FIELDS, ids=IDS)
def test_validate_refuses_each_bad_field_in_one_line_naming_it(cls, f):
    cfg = cls(**{**BASE.get(cls, {}), f.name: _bad(f)})
    with pytest.raises(LeadTermError) as e:
        cfg.validate()
    if f.name in DELEGATED:   # the registry's own message, which names the value's kind
        assert DELEGATED[f.name] in str(e.value) and "\n" not in str(e.value)
        return
    assert "\n" not in str(e.value) and re.search(rf"(?<![a-z_]){f.name}(?![a-z_])", str(e.value)), str(e.value)
    assert "{" + f.name + "}" in e.value.template, "the message names the field as {name}, so the CLI shows its flag"
    flag = C.cli_flags(cls).get(f.name)
    if flag:   # on the command line, the same message names the flag
        assert flag in e.value.render(C.cli_flags(cls)), e.value.render(C.cli_flags(cls))


@pytest.mark.parametrize("command", sorted(COMMAND_ONLY))
def test_every_flag_is_a_config_field_or_the_commands_own(command):
    parser = _commands()[command]
    fields = {flag: (cls, name) for cls in C.CONFIGS for name, flag in C.cli_flags(cls).items()}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
        for flag in longs:
            if flag in COMMAND_ONLY[command]:
                continue
            assert flag in fields, f"{command} {flag}: declare it in tl_leadterm.config or list it in COMMAND_ONLY"
            assert action.dest == fields[flag][1], (command, flag, action.dest)
    assert COMMAND_ONLY.keys() == _commands().keys()


def test_flags_and_defaults_come_from_the_fields():
    demo = _commands()["demo"]
    cfg = C.from_args(C.DemoConfig, demo.parse_args(["--out", "x"]))
    assert cfg == C.DemoConfig(out="x").validate()
    a = C.from_args(C.AnalysisConfig, _commands()["analyze"].parse_args(["--model", "m", "--basis", "b", "--out", "o"]))
    assert a == C.AnalysisConfig().validate()
    assert C.flag_of("source") == "--corpus" and C.flag_of("every") == "--log-every" and C.flag_of("top_k") == "--top-k"
    help_text = " ".join(demo.format_help().split())
    assert "(default 200; 0: none)" in help_text and "(default bird,fish,car)" in help_text


def test_no_range_check_is_written_in_the_commands():
    """The commands turn flags into configs; the checks live in config/params (one place)."""
    for p in sorted((PKG / "commands").glob("*.py")):
        src = p.read_text(encoding="utf-8")
        for lit in (n.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Constant) and isinstance(n.value, str)):
            assert not re.search(r"must be (>=|<=|>|<|positive|in \[|an integer|one of)", lit), (p.name, lit)
        assert "from ..params import" not in src, p.name


def test_params_are_the_fields_and_the_ranges():
    from tl_leadterm.errors import LIBRARY_PARAMS, PARAMS
    assert isinstance(PARAMS, frozenset)
    assert {f.name for _, f in FIELDS} <= PARAMS and LIBRARY_PARAMS <= PARAMS
    assert {"seq_len", "top_k", "null_draws", "gradient_corpus", "every"} <= PARAMS
    assert "demo_steps" not in PARAMS and "batch_size_or_full" not in PARAMS   # ranges named for one use


def test_choice_lists_match_the_library():
    from tl_leadterm.analysis import LENSES
    from tl_leadterm.basis.pipeline import DTYPES
    from tl_leadterm.corpus.tokenfiles import TOKEN_DTYPES
    from tl_leadterm.theory import SITES
    assert C.LENS_NAMES == tuple(LENSES) and set(C.DTYPE_NAMES) == set(DTYPES)
    assert C.TOKEN_DTYPE_NAMES == tuple(TOKEN_DTYPES)
    assert ", ".join(SITES) in C.spec(C.AnalysisConfig, "sites").help


def test_demo_config_stays_importable_from_the_pipeline():
    from tl_leadterm import pipeline
    assert pipeline.DemoConfig is C.DemoConfig and pipeline.DEMO_TOKENS == C.DEMO_TOKENS
    assert C.DemoConfig(out="x", steps=100).checkpoint_steps == [1, 2, 4, 8, 16, 32, 64, 100]


def test_validate_normalises_and_checks_across_fields():
    import numpy as np
    a = C.AnalysisConfig(lens="gradient, weights", sites="circuit_ov,key_query", gradient_corpus="g.txt",
                         null_draws=np.int64(3)).validate()
    assert a.lens == ("weights", "gradient") and a.sites == ("key_query", "circuit_ov") and type(a.null_draws) is int
    for kw, fragment in (({"lens": "update"}, "lens update needs reference"),
                         ({"gradient_corpus": "g.txt"}, "gradient_corpus is used by lens gradient only"),
                         ({"lens": "gradient"}, "lens gradient needs gradient_corpus"),
                         ({"lens": "weights,grad"}, "unknown lens 'grad'")):
        with pytest.raises(LeadTermError, match=fragment):
            C.AnalysisConfig(**kw).validate()
    with pytest.raises(LeadTermError, match="keep_checkpoints needs GPT-NeoX checkpoints"):
        C.DemoConfig(out="x", neox_steps=0, keep_checkpoints=True).validate()
    with pytest.raises(LeadTermError, match="tokens lists 'a' more than once"):
        C.DemoConfig(out="x", tokens="a,b,a").validate()


@pytest.mark.parametrize("argv,fragment", [
    (["demo", "--out", "{o}", "--layers", "0"], "--layers must be an integer >= 1"),
    (["demo", "--out", "{o}", "--batch-size", "-1"], "--batch-size must be an integer >= 0 (0: full batch)"),
    (["demo", "--out", "{o}", "--steps", "0"], "--steps must be >= 1"),
    (["demo", "--out", "{o}", "--text", " "], "--text is empty"),
    (["analyze", "--model", "m", "--basis", "b", "--out", "{o}", "--gradient-windows", "0"], "--gradient-windows must be >= 1"),
    (["analyze", "--model", "m", "--basis", "b", "--out", "{o}", "--heldout-windows", "0"], "--heldout-windows must be >= 1"),
    (["analyze", "--model", "m", "--basis", "b", "--out", "{o}", "--seeds", "0"], "--seeds must be >= 1"),
    (["sweep", "--checkpoints", "a", "--basis", "b", "--out", "{o}", "--retention-threshold", "1.5"],
     "--retention-threshold must be a finite number >= 0 and <= 1"),
    (["sweep", "--checkpoints", "a", "--basis", "b", "--out", "{o}", "--lens", "update"], "--lens update needs --reference"),
    (["toy-train", "--corpus", "builtin:stories", "--seq-len", "8", "--layers", "1", "--lr", "0.1", "--steps", "1",
      "--batch-size", "0", "--seed", "0", "--out", "{o}"], "--batch-size must be an integer >= 1"),
    (["basis", "--corpus", "builtin:stories", "--seq-len", "1", "--top-k", "3", "--out", "{o}.safetensors"],
     "--seq-len must be an integer >= 2"),
])
def test_cli_names_the_flag_in_one_line(tmp_path, capsys, argv, fragment):
    rc = main([a.replace("{o}", str(tmp_path / "o")) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and err.count("\n") == 1 and err.startswith("error: "), err
    assert not (tmp_path / "o").exists()

"""The package's layout keeps its promises: one source for the theory, no kind branching outside the
adapter/tokenizers, small modules, imports only downward through the pipeline stages."""

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "tl_leadterm"
MODULES = sorted(p for p in PKG.rglob("*.py"))

# pipeline stages, lowest first: a module may import its own stage and the ones below, never above
STAGES = [
    {"errors", "_version", "io"},
    {"theory"},
    {"tokenization", "data", "documents"},
    {"corpus", "tokenfiles", "streams"},
    {"basis"},
    {"toy"},
    {"models"},
    {"analysis", "compare", "distributed", "shards"},
    {"visual", "plots"},
    {"monitor", "report", "results"},
    {"pipeline"},
    {"commands", "cli"},
]
RANK = {name: i for i, stage in enumerate(STAGES) for name in stage}


def unit(path: Path) -> str:
    return path.relative_to(PKG).parts[0].removesuffix(".py")


def imported_units(path: Path) -> set[str]:
    """The package units a module imports (relative imports resolved against its location)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    depth_base = path.relative_to(PKG).parts[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("tl_leadterm."):
                    out.add(node.module.split(".")[1])
                continue
            base = depth_base[: len(depth_base) - (node.level - 1)]
            parts = list(base) + (node.module.split(".") if node.module else [])
            if parts:
                out.add(parts[0].removesuffix(".py"))
            else:  # "from . import x" at the top level
                out.update(a.name for a in node.names)
    return out


def test_every_unit_has_a_stage():
    assert {unit(p) for p in MODULES if unit(p) != "__init__"} <= set(RANK)


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PKG)) for p in MODULES])
def test_imports_go_down_the_pipeline(path):
    me = unit(path)
    if me == "__init__":
        return
    for other in imported_units(path) - {me, "__init__"}:
        assert RANK[other] <= RANK[me], f"{path.relative_to(PKG)} (stage {me}) imports {other}, a later stage"


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PKG)) for p in MODULES])
def test_modules_are_small(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 400


def test_no_kind_branching_outside_the_adapter_and_tokenizers():
    allowed = {PKG / "models" / "loading.py", PKG / "models" / "adapter.py", PKG / "tokenization.py"}
    for p in MODULES:
        if p in allowed:
            continue
        assert not re.search(r"(?<!dtype\.)(?<!dt\.)\bkind\s*[!=]=", p.read_text(encoding="utf-8")), f"{p.relative_to(PKG)} branches on kind"


def test_the_leading_term_table_is_written_once():
    """THEORY.md §3's weight → term map lives in theory.py; no other module spells it out."""
    pattern = re.compile(r"""["']W_O["']\s*:\s*["']bigram["']""")
    holders = [p.relative_to(PKG) for p in MODULES if pattern.search(p.read_text(encoding="utf-8"))]
    assert holders == [], holders
    symbols = re.compile(r"""["']bigram["']\s*:\s*["']B̄["']""")
    assert [p.name for p in MODULES if symbols.search(p.read_text(encoding="utf-8"))] == []


def test_no_import_fallbacks_for_the_package_itself():
    for p in MODULES:
        text = p.read_text(encoding="utf-8")
        for m in re.finditer(r"try:\s*\n\s*from \.+[\w.]* import[^\n]*\n\s*except (ImportError|ModuleNotFoundError)", text):
            pytest.fail(f"{p.relative_to(PKG)} guards an import of its own package: {m.group(0)!r}")


def test_every_parameter_named_in_a_message_is_registered():
    """Messages name parameters as {param}; the CLI turns the registered ones into flags (errors.PARAMS)."""
    from tl_leadterm.errors import PARAMS
    named = set()
    for p in MODULES:
        for line in p.read_text(encoding="utf-8").splitlines():
            named |= set(re.findall(r"\{\{([a-z][a-z0-9_]*)\}\}", line))             # markers in f-strings
            if "require(" in line or "LeadTermError(" in line:                      # markers in plain strings
                for lit in re.findall(r'(?<![A-Za-z_])"([^"]*)"', line):
                    named |= set(re.findall(r"\{([a-z][a-z0-9_]*)\}", lit)) if "{{" not in lit else set()
    named -= {"name", "what"}                       # _check_int and parse_range pass the parameter's name in
    assert named <= PARAMS, sorted(named - PARAMS)


def test_braces_that_are_not_parameters_are_kept():
    from tl_leadterm import LeadTermError
    e = LeadTermError("token file /data/{run}/x  y.bin not found; pass {vocab_size}")
    assert str(e) == "token file /data/{run}/x  y.bin not found; pass vocab_size"
    assert e.render({"vocab_size": "--vocab-size"}).endswith("pass --vocab-size")

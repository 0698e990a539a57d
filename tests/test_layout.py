"""The package's layout keeps its promises, checked on the syntax tree: one source for the theory, no branching
on the model's kind outside the adapter and its loader, imports only downward through the pipeline stages."""

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "tl_leadterm"
MODULES = sorted(p for p in PKG.rglob("*.py"))

# pipeline stages, lowest first: a module may import its own stage and the ones below, never above
STAGES = [
    {"errors", "_version", "io", "params", "tensorfiles", "logs"},
    {"theory"},
    {"config"},
    {"tokenization", "data"},
    {"corpus", "documents", "tokenfiles", "streams"},   # corpus/ package; the last three: deprecated aliases of corpus.*
    {"basis"},
    {"toy"},
    {"models"},
    {"analysis", "compare", "distributed", "shards"},   # distributed, shards: deprecated aliases of basis.*, analysis.sweep
    {"visual", "plots"},
    {"monitor", "sinks", "report", "results"},
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


#: the adapter's kinds (ModelAdapter.kind) and the model classes behind them
KINDS = {"hooked", "bridge", "toy", "hf"}
MODEL_CLASSES = {"ToyTransformer", "HookedTransformer", "TransformerBridge", "HFNeoXAdapter", "GPTNeoXForCausalLM"}
KIND_HOME = {PKG / "models" / "loading.py", PKG / "models" / "adapter.py", PKG / "models" / "hf.py", PKG / "toy.py"}


def _is_kind(node) -> bool:
    return (isinstance(node, ast.Name) and node.id == "kind") or (isinstance(node, ast.Attribute) and node.attr == "kind")


def _kind_constants(node) -> set:
    """The model kinds a comparison operand spells out: a string constant, or a tuple/list/set of them."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)} & KINDS


def kind_branches(tree) -> list[tuple[int, str]]:
    """``(line, what)`` for every branch on the model's kind: ``kind ==/!=/in`` a model kind (also ``match kind``),
    and ``isinstance(x, <model class>)``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_is_kind(o) for o in operands) and any(_kind_constants(o) for o in operands):
                out.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Match) and _is_kind(node.subject):
            out.append((node.lineno, f"match {ast.unparse(node.subject)}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance" and len(node.args) == 2:
            cls = node.args[1]
            names = {ast.unparse(e).split(".")[-1] for e in (cls.elts if isinstance(cls, ast.Tuple) else [cls])}
            if names & MODEL_CLASSES:
                out.append((node.lineno, ast.unparse(node)))
    return out


def test_kind_branches_are_recognised():
    src = """
a = ad.kind == "toy"
b = kind in ("hooked", "bridge")
c = "hf" != self.kind
d = dtype.kind == "f" or kind == "bool" or arr.dtype.kind in "iu"
e = isinstance(m, ToyTransformer) or isinstance(m, (int, tl.TransformerBridge))
match ad.kind:
    case "toy":
        pass
"""
    found = sorted(line for line, _ in kind_branches(ast.parse(src)))
    assert found == [2, 3, 4, 6, 6, 7]


def test_no_kind_branching_outside_the_adapter():
    """Callers ask the adapter for capabilities (token_space, folded, n_key_value_heads), never the kind of model."""
    for p in MODULES:
        if p in KIND_HOME:
            continue
        found = kind_branches(ast.parse(p.read_text(encoding="utf-8")))
        assert not found, f"{p.relative_to(PKG)} branches on the model's kind: {found}"


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

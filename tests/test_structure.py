"""The package's shape: imports run one way (the README's layer order), no circles, no module over 600 lines,
function-level imports of the package only in the CLI, and the light layers importable without Ray."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "attnsearch"
MAX_LINES = 600
# The CLI imports each command's layers when the command runs (start-up time of `attnsearch --help`).
LAZY_ALLOWED = "attnsearch.cli"  # the package and its modules


def lazy_allowed(name: str) -> bool:
    return name == LAZY_ALLOWED or name.startswith(LAZY_ALLOWED + ".")


def readme_layers() -> list[list[str]]:
    """The layer order of the README's architecture section, lowest layer last (as the README draws it)."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- layers -->\s*```text\n(.*?)```", text, re.S)
    assert m, "README.md lost its layer diagram (a ```text block after <!-- layers -->)"
    layers = []
    for line in m.group(1).splitlines():
        names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", line.split("#")[0])
        if names:
            layers.append(names)
    return layers


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> list[tuple[str, bool, int]]:
    """(imported package module, at function level?, line) for every import of an attnsearch module."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # type-only imports never run
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function, child.lineno) for a in child.names
                             if a.name.startswith("attnsearch"))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                elif child.module and child.module.startswith("attnsearch"):
                    target = child.module
                else:
                    continue
                subs = [f"{target}.{a.name}" for a in child.names if f"{target}.{a.name}" in ALL]
                if len(subs) < len(child.names):  # names from the module itself, not only its submodules
                    found.append((target, in_function, child.lineno))
                found.extend((sub, in_function, child.lineno) for sub in subs)  # `from . import tracking`
            visit(child, nested)

    visit(tree, False)
    return found


ALL = modules()


def layer_of(name: str, layers: list[list[str]]) -> int:
    top = name.split(".")[1] if name.count(".") else ""
    for depth, names in enumerate(reversed(layers)):
        if top in names:
            return depth
    raise AssertionError(f"{name}: its top-level module {top!r} is in no layer of the README's diagram")


def test_every_module_is_in_a_layer():
    layers = readme_layers()
    tops = {n.split(".")[1] for n in ALL if n.count(".")}
    placed = {n for names in layers for n in names}
    assert tops <= placed, f"modules missing from the README's layers: {sorted(tops - placed)}"
    assert placed <= tops, f"the README's layers name modules that do not exist: {sorted(placed - tops)}"


def readme_drawing() -> str:
    """The README's architecture drawing: the first code block of its Architecture section."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Architecture\n.*?```\n(.*?)```", text, re.S | re.M)
    assert m, "README.md lost its architecture drawing (a ``` block under ## Architecture)"
    return m.group(1)


def test_the_architecture_drawing_names_what_exists_and_every_package():
    drawing = readme_drawing()
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    drawn_packages = set(re.findall(r"(?<![\w./])([a-z_]+)/(?!\w)", drawing)) - {"jobs"}  # not train/eval
    drawn_modules = set(re.findall(r"(?<![\w/])([a-z_]+)\.py\b", drawing))
    dotted = {d for d in re.findall(r"\b([a-z_]+(?:\.[a-z_]+)+)\b", drawing) if d.split(".")[0] in packages}
    assert drawn_packages <= packages, f"the drawing names packages that do not exist: {drawn_packages - packages}"
    assert packages <= drawn_packages, f"packages missing from the drawing (as name/): {packages - drawn_packages}"
    missing = sorted(m for m in drawn_modules if not (PACKAGE / f"{m}.py").is_file())
    assert not missing, f"the drawing names modules that do not exist: {missing}"
    for name in dotted:  # tracking.callback.MLflowTracker: a module path, then maybe one attribute
        parts = name.split(".")
        assert any(f"attnsearch.{'.'.join(parts[:i])}" in ALL for i in range(len(parts), 0, -1)), name


def test_imports_run_downward_and_lazily_only_in_the_cli():
    layers = readme_layers()
    problems = []
    for name, path in ALL.items():
        if name == "attnsearch":
            assert not imports_of(name, path), \
                "attnsearch/__init__.py must stay import-free (it loads with every module)"
            continue
        here = layer_of(name, layers)
        for target, lazy, line in imports_of(name, path):
            if target == "attnsearch":
                continue
            if layer_of(target, layers) > here:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {name} imports {target}, a higher layer")
            if lazy and not lazy_allowed(name):
                problems.append(f"{path.relative_to(ROOT)}:{line}: {name} imports {target} inside a function")
    assert not problems, "\n".join(problems)


def test_no_import_circles():
    graph = {name: {t for t, _, _ in imports_of(name, path) if t in ALL and t != name} for name, path in ALL.items()}
    # a package's __init__ importing its own submodules is how packages work; a submodule importing its own
    # package's __init__ back would be a circle through it, and is caught like any other
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_graph_walker_sees_function_level_and_relative_imports(tmp_path):
    # the checks above are only as good as this walker: it must see an upward import hidden in a function
    found = imports_of("attnsearch.cli._studies", PACKAGE / "cli" / "_studies.py")
    assert any(t == "attnsearch.search" and lazy for t, lazy, _ in found)
    assert any(t == "attnsearch.contract" and not lazy for t, lazy, _ in found)
    assert not lazy_allowed("attnsearch.client") and lazy_allowed("attnsearch.cli._studies")
    found = imports_of("attnsearch.tracking._store", PACKAGE / "tracking" / "_store.py")
    assert ("attnsearch.tracking._params", False) in {(t, lazy) for t, lazy, _ in found}


@pytest.mark.parametrize("name", sorted(ALL))
def test_module_size(name):
    lines = sum(1 for _ in ALL[name].open())
    assert lines <= MAX_LINES, f"{ALL[name].relative_to(ROOT)} has {lines} lines (> {MAX_LINES}): more than one job?"


@pytest.mark.parametrize("module, forbidden", [
    ("attnsearch.attention", ("ray", "mlflow", "optuna")),
    ("attnsearch.models", ("ray", "mlflow", "optuna")),
    ("attnsearch.flops", ("ray", "mlflow", "optuna")),
    ("attnsearch.latency", ("ray", "mlflow", "optuna", "pydantic")),
    ("attnsearch.prune", ("ray", "mlflow", "optuna", "pydantic")),
    ("attnsearch.contract", ("ray", "mlflow", "optuna", "torch", "pydantic")),
    ("attnsearch.uris", ("ray", "mlflow", "optuna", "torch", "pydantic")),
    ("attnsearch.config", ("ray", "mlflow")),
    ("attnsearch.tracking", ("ray",)),
    ("attnsearch.pareto", ("ray",)),
    ("attnsearch.cli", ("ray", "mlflow", "torch", "optuna")),
])
def test_light_layers_do_not_import_heavy_ones(module, forbidden):
    code = f"import sys, {module}; print(sorted(m for m in {forbidden!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"importing {module} imports {out.stdout.strip()}"

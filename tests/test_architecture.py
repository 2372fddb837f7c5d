"""The shape of the package, checked: the library imports no ZenML, no module imports another in a
cycle (reading every import, those inside functions too), steps stay thin, and long modules say why
they are long."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "labelspace"
# The only places that may import ZenML: its steps and pipelines, and the commands that run them.
ZENML_ALLOWED = ("labelspace.steps", "labelspace.pipelines")
MAX_STEP_LINES = 60
MAX_MODULE_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Modules `path` imports: at module level only, or anywhere (function bodies too). A relative
    import is read as the absolute name it stands for."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(path, node.module, node.level)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _absolute(path: Path, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[:len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _internal(names: set[str]) -> set[str]:
    return {name for name in names if name in MODULES}


def test_the_library_imports_no_zenml():
    offenders = {}
    for name, path in MODULES.items():
        if name.startswith(ZENML_ALLOWED):
            continue
        zenml = sorted(i for i in _imports(path, top_level_only=False) if i == "zenml" or i.startswith("zenml."))
        if zenml:
            offenders[name] = zenml
    assert offenders == {}, "only steps/ and pipelines/ may import ZenML"


def test_no_import_cycles():
    """Every import counts, a function's too: an import inside a function is for start-up time, never a
    way to close a cycle (two modules that need each other share a part that belongs in a third)."""
    graph = {name: _internal(_imports(path, top_level_only=False)) - {name} for name, path in MODULES.items()}
    # A package imports its submodules' parents implicitly: `import a.b` runs a/__init__ first.
    for name in list(graph):
        graph[name] |= {parent for child in graph[name] for parent in _parents(child)} - {name} - set(_parents(name))
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("labelspace.steps.")))
def test_steps_are_thin_adapters(name):
    lines = [line for line in MODULES[name].read_text().splitlines() if line.strip()]
    assert len(lines) <= MAX_STEP_LINES, f"{name} has {len(lines)} lines: move its decisions into the library"


def test_long_modules_say_why_in_their_docstring():
    long = {}
    for name, path in MODULES.items():
        n = len(path.read_text().splitlines())
        if n > MAX_MODULE_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            if "lines" not in doc:
                long[name] = n
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines need a reason in their docstring"


def test_every_command_module_exists_and_has_the_two_functions():
    from labelspace.cli import COMMANDS

    for command, (module, _) in COMMANDS.items():
        tree = ast.parse(MODULES[f"labelspace.cli.{module}"].read_text())
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert {"configure_parser", "run_cli"} <= functions, command

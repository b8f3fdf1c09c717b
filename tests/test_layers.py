"""The layers of shared/DESIGN.md as a rule that runs: every import of every module under
`tcompress/` (module level and inside functions; `TYPE_CHECKING` blocks left out) goes to its
own layer or a lower one, no modules import each other in a circle, and the house rules hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "tcompress"
LAYERS = {  # top-level name under tcompress -> layer
    "core": 0, "report": 0, "data": 0,
    "kernels": 1,
    "models": 2, "packed": 2,
    "checkpoint": 3,
    "engine": 4, "solvers": 4, "runtime": 4,
    "quantize": 5, "prune": 5, "arch": 5,
    "distill": 6, "eval": 6, "export": 6, "plan": 6, "recipe": 6,
    "cli": 7,
}
METHOD_FAMILIES = ("quantize", "prune", "arch")  # never import each other


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    return 7 if len(parts) == 1 else LAYERS[parts[1]]


def package(module: str) -> str:
    """The top-level package under tcompress (`quantize`), or the module itself for a root file."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


class Imports(ast.NodeVisitor):
    """(target module, imported names, at module level?, line) of every tcompress import."""

    def __init__(self, module: str, is_package: bool):
        self.module, self.is_package, self.found, self.depth = module, is_package, [], 0

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _scoped(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scoped

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == "tcompress":
                self.found.append((alias.name, (), self.depth == 0, node.lineno))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.split(".")
            base = base if self.is_package else base[:-1]
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != "tcompress":
            return
        names = tuple(alias.name for alias in node.names)
        submodules = [f"{target}.{name}" for name in names if f"{target}.{name}" in MODULES]
        for sub in submodules:  # `from tcompress.quantize import gptq` imports the module gptq
            self.found.append((sub, (), self.depth == 0, node.lineno))
        rest = tuple(name for name in names if f"{target}.{name}" not in MODULES)
        if rest or not submodules:
            self.found.append((target, rest, self.depth == 0, node.lineno))


def imports_of(module: str) -> list[tuple[str, tuple[str, ...], bool, int]]:
    path = MODULES[module]
    visitor = Imports(module, path.name == "__init__.py")
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return visitor.found


GRAPH = {module: imports_of(module) for module in MODULES}


def where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT.parent)}:{line}"


def test_every_package_has_a_layer():
    unknown = sorted({package(m) for m in MODULES if package(m) and package(m) not in LAYERS})
    assert not unknown, f"packages with no layer in LAYERS (add them to shared/DESIGN.md's table too): {unknown}"


def test_imports_go_only_to_the_same_or_a_lower_layer():
    upward = [f"{where(m, line)}: {m} (layer {layer(m)}) imports {target} (layer {layer(target)})"
              for m, found in GRAPH.items() for target, _, _, line in found
              if target in MODULES and layer(target) > layer(m)]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def cycle_from(start: str, edges: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports through `start`, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in edges.get(node, ()):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_no_import_circles():
    edges = {m: {t for t, _, _, _ in found if t in MODULES and t != m} for m, found in GRAPH.items()}
    circles = {tuple(c) for m in MODULES if (c := cycle_from(m, edges))}
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in sorted(circles))


def test_no_tcompress_import_inside_a_function():
    lazy = [f"{where(m, line)}: {target}" for m, found in GRAPH.items() for target, _, top, line in found if not top]
    assert not lazy, ("imports of tcompress inside functions (move what is imported down a layer instead; lazy "
                      "imports are for optional heavy dependencies only):\n" + "\n".join(lazy))


def test_only_layer_seven_imports_the_top_package():
    offenders = [f"{where(m, line)}" for m, found in GRAPH.items() for target, _, _, line in found
                 if target == "tcompress" and layer(m) < 7]
    assert not offenders, "`import tcompress` below layer 7:\n" + "\n".join(offenders)


def test_method_families_do_not_import_each_other():
    crossed = [f"{where(m, line)}: {target}" for m, found in GRAPH.items() for target, _, _, line in found
               if package(m) in METHOD_FAMILIES and package(target) in METHOD_FAMILIES
               and package(target) != package(m)]
    assert not crossed, "quantize/, prune/ and arch/ import each other:\n" + "\n".join(crossed)


def test_package_inits_re_export_only_their_own_modules():
    foreign = [f"{where(m, line)}: {target}" for m, found in GRAPH.items() if MODULES[m].name == "__init__.py"
               and layer(m) < 7 for target, _, _, line in found if not target.startswith(m + ".")]
    assert not foreign, "package __init__ files importing from other packages:\n" + "\n".join(foreign)


def test_no_private_name_is_imported_across_packages():
    private = [f"{where(m, line)}: {target}.{name}" for m, found in GRAPH.items() for target, names, _, line in found
               for name in names if name.startswith("_") and package(target) != package(m)]
    assert not private, "private names imported from another package:\n" + "\n".join(private)


@pytest.mark.parametrize("source, problem", [
    ("from tcompress.engine import apply\n", "upward"),
    ("def f():\n    from tcompress.report import format_table\n", "lazy"),
])
def test_the_rules_catch_what_they_are_for(source, problem, tmp_path):
    """A module of layer 2 written to break a rule is caught (so the rules can fail)."""
    module = "tcompress.packed.example"
    MODULES[module] = tmp_path / "example.py"
    MODULES[module].write_text(source)
    try:
        found = imports_of(module)
    finally:
        del MODULES[module]
    if problem == "upward":
        assert any(layer(target) > layer(module) for target, _, _, _ in found)
    else:
        assert any(not top for _, _, top, _ in found)

"""No import cycle among scanet_node's modules, read from the source with ``ast`` (nothing is
imported, so a cycle cannot hide behind an import order that happens to work).

An edge ``a -> b``: an import statement in ``a`` that names the scanet_node module ``b``.
``from p import x`` points at ``p.x`` where that is a module, else at ``p``; relative imports
are resolved against ``a``'s package. Importing ``p.x`` is no edge to the package ``p`` itself:
Python puts a package in ``sys.modules`` before it runs its submodules, so that order never
fails on its own.

Which statements count:

- at module level or in a class body, also under ``if``/``try``/``with`` there: they run when
  the module loads;
- under ``if TYPE_CHECKING:`` too, although only type checkers run them: a module typed against
  another depends on it, and the cycle issue 17 names (``admin/web.py`` <-> ``service.py``) is
  of this kind;
- inside functions, in a second test of their own: they run on the first call, after every
  module has loaded, so they form no load-time cycle, but a cycle they close is a cycle in the
  design all the same.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "scanet_node"

Edges = dict[str, dict[str, int]]  # module -> {imported module: line of the first such import}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of a module with this ``body``, except those inside functions."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If | ast.With | ast.ClassDef):
            yield from module_level_imports(node.body)
            yield from module_level_imports(getattr(node, "orelse", []))
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from module_level_imports(block)


def all_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of a module with this ``body``, inside functions too."""
    for statement in body:
        for node in ast.walk(statement):
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield node


def _base(module: str, is_package: bool, level: int) -> str:
    parts = module.split(".") if is_package else module.split(".")[:-1]
    return ".".join(parts[: len(parts) - (level - 1)])


def targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool
) -> Iterator[tuple[str, ...]]:
    """Per name an import statement in ``module`` binds, the modules it may load, best first:
    ``from p import x`` loads the submodule ``p.x`` if there is one, else ``p``."""
    if isinstance(node, ast.Import):
        yield from ((alias.name,) for alias in node.names)
        return
    source = node.module or ""
    if node.level:
        source = ".".join(filter(None, [_base(module, is_package, node.level), source]))
    for alias in node.names:
        yield f"{source}.{alias.name}", source


def import_graph(
    imports: Callable[[list[ast.stmt]], Iterator[ast.Import | ast.ImportFrom]],
) -> Edges:
    """The package's modules and, for each, the modules its ``imports`` name."""
    modules = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    graph: Edges = {name: {} for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        for node in imports(tree.body):
            for candidates in targets(node, name, is_package):
                target = next((c for c in candidates if c in modules), None)
                if target is not None and target != name:
                    graph[name].setdefault(target, node.lineno)
    return graph


def cycles(graph: Edges) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return sorted(found)


def describe(component: list[str], graph: Edges) -> str:
    members = set(component)
    lines = [
        f"  {source} -> {target} (line {line})"
        for source in component
        for target, line in sorted(graph[source].items())
        if target in members
    ]
    return "\n".join([" <-> ".join(component), *lines])


def assert_no_cycle(graph: Edges, kind: str) -> None:
    found = cycles(graph)
    assert found == [], f"import cycles ({kind}):\n" + "\n".join(describe(c, graph) for c in found)


def test_relative_imports_resolve_against_the_package() -> None:
    def names(code: str, module: str, is_package: bool = False) -> list[tuple[str, ...]]:
        (node,) = ast.parse(code).body
        assert isinstance(node, ast.Import | ast.ImportFrom)
        return list(targets(node, module, is_package))

    store = "scanet_node.catalog.store"
    assert names("from ..errors import X", store) == [
        ("scanet_node.errors.X", "scanet_node.errors")
    ]
    assert names("from .models import Study", store) == [
        ("scanet_node.catalog.models.Study", "scanet_node.catalog.models")
    ]
    assert names("from . import models", "scanet_node.catalog", is_package=True) == [
        ("scanet_node.catalog.models", "scanet_node.catalog")
    ]
    assert names("import scanet_node.errors, os", store) == [("scanet_node.errors",), ("os",)]


def test_type_checking_imports_count_and_function_imports_only_in_all_imports() -> None:
    body = ast.parse(
        "if TYPE_CHECKING:\n    import a\nclass C:\n    import b\ndef f():\n    import c\n"
    ).body
    names = [alias.name for node in module_level_imports(body) for alias in node.names]
    assert names == ["a", "b"]
    assert [alias.name for node in all_imports(body) for alias in node.names] == ["a", "b", "c"]


def test_the_graph_sees_the_package_s_imports() -> None:
    graph = import_graph(module_level_imports)
    assert len(graph) > 50
    assert "scanet_node.catalog.engine" in graph["scanet_node.catalog.schema"]
    assert "scanet_node.errors" in graph["scanet_node.catalog.schema"]
    assert "scanet_node.catalog.models" in graph["scanet_node.catalog.store"]
    lazy = import_graph(all_imports)
    assert all(graph[m].keys() <= lazy[m].keys() for m in graph)
    assert any(graph[m].keys() < lazy[m].keys() for m in graph)


def test_no_import_cycle_at_module_level() -> None:
    assert_no_cycle(import_graph(module_level_imports), "module level and TYPE_CHECKING")


def test_no_import_cycle_even_through_imports_inside_functions() -> None:
    assert_no_cycle(import_graph(all_imports), "imports inside functions included")

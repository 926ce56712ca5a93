"""The package's layering, read from its imports (ast): each subpackage is a room (a stage or a layer), and imports
run one way, from a higher layer to a lower one or within a room:

    kernels (0) < data (1) < config (2) < models (3) < reporting (4) < run (5) < train | sft | pipeline (6)
    < evaluation (7)

train, sft and pipeline are siblings: none imports another. The two loose modules, simpo/errors.py and
simpo/environment.py, import nothing of simpo and every room may import them; kernels imports nothing else of
simpo."""

import ast
from pathlib import Path

import pytest
from conftest import REPO

SIMPO = Path(REPO) / "simpo"
LAYERS = {
    "kernels": 0,
    "data": 1,
    "config": 2,
    "models": 3,
    "reporting": 4,
    "run": 5,
    "train": 6,
    "sft": 6,
    "pipeline": 6,
    "evaluation": 7,
}
LEAVES = {"simpo.errors", "simpo.environment"}  # loose modules below every room


def module_name(path: Path) -> str:
    parts = path.relative_to(SIMPO.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def simpo_imports(path: Path) -> set[str]:
    """Every simpo module this file imports, at the top or inside a function (a lazy import is a dependency too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "simpo"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "simpo":
            found.add(node.module)
            # `from simpo.kernels import triton_tiles` imports the submodule
            found |= {
                f"{node.module}.{alias.name}"
                for alias in node.names
                if SIMPO.parent.joinpath(*f"{node.module}.{alias.name}".split(".")).with_suffix(".py").exists()
            }
    return found


def import_graph(root: Path = SIMPO) -> dict[str, set[str]]:
    return {module_name(path): simpo_imports(path) for path in sorted(root.rglob("*.py"))}


def package_of(module: str) -> str | None:
    """The room a module belongs to; None for simpo itself and for the loose leaf modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and module not in LEAVES) else None


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that go up a layer, across sibling packages, or into a package the layers do not name."""
    found = []
    for module, imported in graph.items():
        source = package_of(module)
        for target in imported:
            to = package_of(target)
            if source is None or to is None or source == to:
                continue
            if source not in LAYERS or to not in LAYERS:
                found.append(f"{module} -> {target}: a package outside the layers")
            elif LAYERS[to] >= LAYERS[source]:
                found.append(f"{module} -> {target}: {to} is not below {source}")
    return sorted(found)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles among modules (a package's __init__ counts as the package), by depth-first search."""
    nodes = set(graph)
    edges = {m: {t for t in targets if t in nodes and t != m} for m, targets in graph.items()}
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(nodes):
        if node not in state:
            visit(node)
    return found


def test_no_import_goes_up_a_layer_or_across_siblings():
    assert layering_violations(import_graph()) == []


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_kernels_import_nothing_else_of_simpo_and_sft_nothing_of_train():
    graph = import_graph()
    for module, imported in graph.items():
        if package_of(module) == "kernels":
            assert all(package_of(t) == "kernels" or t in LEAVES for t in imported), module
        if package_of(module) == "sft":
            assert not any(package_of(t) == "train" for t in imported), module


def test_the_loose_modules_are_the_leaves_and_import_nothing_of_simpo():
    loose = {f"simpo.{p.stem}" for p in SIMPO.glob("*.py") if p.name != "__init__.py"}
    assert loose == LEAVES
    graph = import_graph()
    assert {leaf: graph[leaf] for leaf in LEAVES} == {leaf: set() for leaf in LEAVES}


def test_every_room_says_what_it_holds_and_what_changes_there():
    """A newcomer reads a room's purpose, and what may change there, in its __init__.py."""
    for room in LAYERS:
        doc = ast.get_docstring(ast.parse((SIMPO / room / "__init__.py").read_text())) or ""
        assert "What changes here" in doc, room


def test_every_error_class_is_defined_in_simpo_errors():
    """One module holds the package's error classes (simpo/errors.py), so that one policy applies to all."""
    elsewhere = []
    for path in sorted(SIMPO.rglob("*.py")):
        if path.name == "errors.py" and path.parent == SIMPO:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                (getattr(base, "id", None) or getattr(base, "attr", "")).endswith(("Error", "Exception"))
                for base in node.bases
            ):
                elsewhere.append(f"{module_name(path)}.{node.name}")
    assert elsewhere == []


def test_every_subpackage_is_a_named_layer():
    packages = {p.parent.relative_to(SIMPO).parts[0] for p in SIMPO.rglob("__init__.py") if p.parent != SIMPO}
    assert packages == set(LAYERS)


@pytest.mark.parametrize(
    "bad,expected",
    [
        (
            {"simpo.kernels.common": {"simpo.models.loading"}},
            "simpo.kernels.common -> simpo.models.loading: models is not below kernels",
        ),
        (
            {"simpo.reporting.summary": {"simpo.run.steps"}},
            "simpo.reporting.summary -> simpo.run.steps: run is not below reporting",
        ),
        (
            {"simpo.config.parser": {"simpo.errors", "simpo.data.mixer", "simpo.models.loading"}},
            "simpo.config.parser -> simpo.models.loading: models is not below config",
        ),
        (
            {"simpo.sft.recipe": {"simpo.train.trainer"}},
            "simpo.sft.recipe -> simpo.train.trainer: train is not below sft",
        ),
        (
            {"simpo.data.mixer": {"simpo.evaluation.setup"}},
            "simpo.data.mixer -> simpo.evaluation.setup: evaluation is not below data",
        ),
    ],
)
def test_the_rules_catch_a_bad_import(bad, expected):
    assert layering_violations(bad) == [expected]


def test_the_circle_search_finds_a_circle():
    graph = {"simpo.a.x": {"simpo.a.y"}, "simpo.a.y": {"simpo.a.z"}, "simpo.a.z": {"simpo.a.x"}}
    assert cycles(graph) == [["simpo.a.x", "simpo.a.y", "simpo.a.z", "simpo.a.x"]]

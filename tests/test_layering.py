"""Imports run one way (docs/architecture.md): command-line faces, then training, then
evaluation and export, then the workdir and inference, then models, data and ops, with the
kernels at the bottom. Every `import` in the tree, function-local ones included, is read
from the source (ast) and checked against that order; the import graph has no cycle; and
nothing outside `jaxseg.ops` asks which backend it runs on to choose an implementation."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Higher imports lower (or equal). Prefix match, longest first; utilities are everyone's.
LAYERS = {
    "faces": 7,
    "jaxseg.training": 6,
    "jaxseg.benchmarking": 6,
    "jaxseg.evaluation": 5,
    "jaxseg.calibration": 5,
    "jaxseg.export": 5,
    "jaxseg.segment": 5,
    "jaxseg.streaming": 5,
    "jaxseg.compress": 5,
    "jaxseg.explain": 5,
    "jaxseg.explain_maps": 5,
    "jaxseg.workdir": 4,
    "jaxseg.inference": 4,
    "jaxseg.postprocess": 4,
    "jaxseg.planning": 4,  # below training: the faces hand it training.memory's measure
    "jaxseg.models": 3,
    "jaxseg.augment": 3,
    "jaxseg.losses": 3,
    "jaxseg.metrics": 3,
    "jaxseg.data": 2,
    "jaxseg.ops": 1,
    "pallas_kernels": 0,
}
UTILITIES = ("jaxseg.errors", "jaxseg.config", "jaxseg.defaults", "jaxseg")
FACES = {
    "jaxseg.train",
    "jaxseg.pretrain",
    "jaxseg.evaluate",
    "jaxseg.predict",
    "jaxseg.benchmark",
    "jaxseg.plan",
    "jaxseg.calibrate",
    "jaxseg.stream",
    "jaxseg.explain_cli",
    "jaxseg.explain",  # python -m jaxseg.explain; the maps are jaxseg.explain_maps
    "jaxseg.cli",
    "jaxseg.export.__main__",
    "jaxseg.models.__main__",
    "jaxseg.data.synthetic",  # writes the demo data: a face over jaxseg.data
    "jaxseg.compress.__main__",
    "pallas_kernels.report",  # the kernel report: a face over the kernels
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("jaxseg", "pallas_kernels"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.add(module)
            # `from jaxseg import evaluation` imports the module jaxseg.evaluation.
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in out if m in MODULES}


def _layer(name: str) -> int | None:
    if name in FACES:
        return LAYERS["faces"]
    best = None
    for prefix, layer in LAYERS.items():
        if name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return None if best is None else best[1]


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_downwards(name):
    mine = _layer(name)
    if mine is None:
        assert name in UTILITIES, f"{name} has no layer: add it to LAYERS or UTILITIES"
        return
    upward = []
    for other in sorted(GRAPH[name]):
        theirs = _layer(other)
        if other in UTILITIES or theirs is None:
            continue
        if theirs > mine:
            upward.append(other)
    assert not upward, f"{name} (layer {mine}) imports higher layers: {upward}"


def test_kernels_import_no_jaxseg():
    offenders = {
        n: sorted(m for m in deps if m.startswith("jaxseg"))
        for n, deps in GRAPH.items()
        if n.startswith("pallas_kernels")
    }
    assert not {n: d for n, d in offenders.items() if d}


def test_no_import_cycles():
    # Package __init__ files re-export their own submodules; an edge into one's own
    # package is not a cycle of two concepts.
    def edges(name):
        return {m for m in GRAPH[name] if not name.startswith(m + ".") and m != name}

    state, cycle = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges(node)):
            if state.get(nxt) == "open":
                cycle.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycle, f"import cycles: {cycle[:3]}"


def test_only_ops_chooses_an_implementation_by_backend():
    """`jax.default_backend()` decides implementations in jaxseg.ops alone; elsewhere it
    may only be reported (benchmark and summary records, error messages)."""
    reporting = {"jaxseg.benchmarking", "jaxseg.models.summary"}
    offenders = []
    for name, path in MODULES.items():
        if name.startswith(("jaxseg.ops", "pallas_kernels")) or name in reporting:
            continue
        if "default_backend()" in path.read_text():
            offenders.append(name)
    assert not offenders

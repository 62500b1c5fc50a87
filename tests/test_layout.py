"""The package is laid out as the loop's parts, and its imports run one way: from the loop
(bootstrap.py) down through the steps to the machinery, never back up, never in a circle."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest first: a module may import from its own layer and those below it.
LAYERS = [
    ("cai", "cai.store", "cai.progress", "cai.config", "programs"),  # the run folder, the config
    ("cai.training",),
    ("cai.serving",),  # a merged swap merges an adapter (cai.training.adapters)
    ("cai.data",),
    ("cai.prompts", "programs.metrics"),
    ("cai.measuring",),
    ("cai.steps",),
    ("cai.run",),
    ("bootstrap",),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer of the longest prefix that names `module` (programs.metrics before programs)."""
    found = [
        (len(prefix), k)
        for k, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(found)[1]


def imports() -> dict[str, set[str]]:
    """Every module of the project and the project modules it imports, at any depth of its code."""
    paths = [ROOT / "bootstrap.py", *ROOT.glob("cai/**/*.py"), *ROOT.glob("programs/**/*.py")]
    modules = {module_name(p): p for p in paths}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_every_module_has_a_layer_and_imports_nothing_above_it():
    graph = imports()
    assert {"cai.steps.respond", "cai.serving.server", "cai.run.launch"} <= set(graph)
    upward = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, deps in graph.items()
        for b in deps
        if layer(b) > layer(a)
    ]
    assert upward == []


def test_no_import_cycle():
    graph, cycles = imports(), []

    def visit(node, path):
        for dep in graph[node]:
            if dep in path:
                cycles.append(path[path.index(dep) :] + [dep])
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(node)

    done: set[str] = set()
    for start in graph:
        if start not in done:
            visit(start, [start])
    assert cycles == []


def test_every_step_of_the_loop_has_its_module_under_cai_steps():
    import bootstrap

    source = ast.parse((ROOT / "bootstrap.py").read_text())
    run_stage = next(n for n in source.body if getattr(n, "name", "") == "run_stage")
    called = {
        n.args[2].body.func.id
        for n in ast.walk(run_stage)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "step"
    }
    assert len(called) == 14
    for name in called:
        assert getattr(bootstrap, name).__module__.startswith("cai.steps.")

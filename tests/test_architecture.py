"""The layering, checked over the real import graph (every ``import`` statement of every module,
read with ``ast``; imports under ``if TYPE_CHECKING:`` are not run and are left out):

- ``fer_core`` never imports the dashboard (``dashboard``, ``pages``) nor Streamlit;
- no import cycle inside ``fer_core`` among the imports a module runs when it is imported;
- only the job level (the CLI, :mod:`fer_core.jobs`, the old path :mod:`fer_core.workflows`,
  :mod:`fer_core.report`) imports ``fer_core.jobs``, ``fer_core.workflows`` or ``fer_core.cli``,
  lazily or not: :data:`KNOWN_UPWARD` lists the imports that still break the rule (issue 13's
  jobs layer), and must shrink, never grow.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Modules that may import the job level: the entry points and the jobs themselves.
JOB_LEVEL = ("fer_core.cli", "fer_core.__main__", "fer_core.jobs", "fer_core.workflows", "fer_core.report")
UPPER = ("fer_core.jobs", "fer_core.workflows", "fer_core.cli")
#: Upward imports that are still there, each with what it waits for. Remove an entry once its
#: import is gone (the test says so); never add one.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for package in ("fer_core", "dashboard", "pages")
           for path in sorted((REPO / package).rglob("*.py"))}


def imports(name: str) -> list[tuple[str, bool]]:
    """``(imported module, imported when the module itself is)`` for every import statement of
    ``name``, resolved to the modules of this repository (a ``from package import sub`` names
    the submodule) or kept as written for outside packages."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for statement in child.orelse:
                    visit(statement, eager)
                continue
            inner = eager and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, inner) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = ".".join(package[:len(package) - child.level + 1] + ([child.module] if child.module else [])) \
                    if child.level else child.module
                for alias in child.names:
                    target = f"{base}.{alias.name}"
                    found.append((target if target in MODULES else base, inner))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def test_the_graph_is_read():
    """The parse finds the edges everyone knows are there (a broken parser would pass every rule)."""
    assert ("fer_core.extraction", True) in GRAPH["fer_core.inference"]
    assert ("fer_core.backends", False) in GRAPH["fer_core.config"]          # the lazy registry check
    assert "fer_core.models" not in {target for target, _ in GRAPH["fer_core.backends"]}  # TYPE_CHECKING only
    assert ("fer_core.training.distributed", True) in GRAPH["fer_core.training.trainer"]
    assert len([m for m in MODULES if m.startswith("fer_core")]) > 50
    assert ("fer_core.jobs.workflows", True) in GRAPH["fer_core.jobs.experiments"]


def test_fer_core_never_imports_the_dashboard_or_streamlit():
    upward = sorted((name, target) for name, edges in GRAPH.items() if name.startswith("fer_core")
                    for target, _ in edges if target.split(".")[0] in ("dashboard", "pages", "streamlit"))
    assert upward == []


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_no_import_cycles_in_fer_core():
    """Cycles among the imports run at import time (a module importing its own package's
    ``__init__`` is not one: the package runs first anyway)."""
    edges = {name: {target for target, eager in GRAPH[name] if eager and target.startswith("fer_core")
                    and target in MODULES and not name.startswith(target + ".")}
             for name in MODULES if name.startswith("fer_core")}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                walk(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_only_the_job_level_imports_workflows_or_the_cli():
    found = {(name, target) for name, edges in GRAPH.items() if name.startswith("fer_core") and not _in(name, JOB_LEVEL)
             for target, _ in edges if _in(target, UPPER)}
    new, gone = sorted(found - set(KNOWN_UPWARD)), sorted(set(KNOWN_UPWARD) - found)
    assert not new, f"upward imports (a lower layer importing the jobs or the CLI): {new}"
    assert not gone, f"these upward imports are gone: remove them from KNOWN_UPWARD: {gone}"


@pytest.mark.parametrize("name", ["fer_core.preprocess", "fer_core.config", "fer_core.errors"])
def test_the_lowest_modules_import_no_model_or_data_code(name):
    """The config and the image -> tensor chain sit below the models: the old cycle
    config -> backends -> models -> factory -> preprocess -> config cannot come back."""
    eager = {target for target, eager in GRAPH[name] if eager and target.startswith("fer_core")}
    assert eager <= {"fer_core.errors"}, eager


def test_the_old_job_paths_are_thin_re_exports():
    """``fer_core.workflows`` only re-exports :mod:`fer_core.jobs.workflows` (its callers keep
    working), and the library below the jobs takes no argparse Namespace."""
    assert {target for target, _ in GRAPH["fer_core.workflows"]} == {"fer_core.jobs.workflows"}
    takes_namespace = sorted(name for name, edges in GRAPH.items() if name.startswith("fer_core")
                             and not _in(name, ("fer_core.cli",)) and "argparse" in {target for target, _ in edges})
    assert takes_namespace == [], takes_namespace


def test_explain_methods_never_import_the_analysis_and_old_paths_are_aliases():
    """``explain/`` is split into ``methods`` (one file each, registered) and ``analysis``
    (regions, sanity, overlays, stored quality): a method needs no analysis; each old path is
    one import of its new module. ``overlay`` has none: its old module would shadow the function
    ``fer_core.explain.overlay`` once imported (see the test below)."""
    found = sorted((name, target) for name, edges in GRAPH.items() if _in(name, ("fer_core.explain.methods",))
                   for target, _ in edges if _in(target, ("fer_core.explain.analysis",)))
    assert found == []
    for old, new in (("gradcam", "methods.gradcam"), ("lrp", "methods.lrp"), ("regions", "analysis.regions"),
                     ("sanity", "analysis.sanity"), ("quality", "analysis.quality")):
        assert [target for target, _ in GRAPH[f"fer_core.explain.{old}"] if target.startswith("fer_core")] == \
            [f"fer_core.explain.{new}"]


def test_importing_any_module_leaves_every_public_name_as_it_was():
    """Importing a submodule sets it as an attribute of its package, so a submodule named like a
    function the package exports replaces that function (``fer_core.explain.overlay`` once did,
    in the upload page, only when a benchmark had imported the old module path in the same test
    worker). Imports every module of ``fer_core`` in a fresh interpreter and compares each
    package's ``__all__`` names before and after."""
    script = """
import importlib, pkgutil, sys, fer_core
packages = [name for _, name, is_package in pkgutil.walk_packages(fer_core.__path__, "fer_core.") if is_package]
before = {}
for name in ["fer_core", *packages]:
    module = importlib.import_module(name)
    before[name] = {key: getattr(module, key) for key in getattr(module, "__all__", ())}
for _, name, _ in pkgutil.walk_packages(fer_core.__path__, "fer_core."):
    if not name.endswith("__main__"):
        importlib.import_module(name)
changed = sorted(f"{package}.{key}" for package, names in before.items() for key, value in names.items()
                 if getattr(sys.modules[package], key) is not value)
print(changed)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout

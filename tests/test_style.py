"""The style the project holds itself to (ruff, configured in pyproject.toml), checked with the tests."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.fail("ruff is missing: install the test extra, pip install -e '.[test]'")
    proc = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


# Each module of the package imports only from its own level or below (lazy imports inside functions
# count too); a module missing here fails the test until it is given a level.
LEVELS = [
    # names, defaults, record types, file writing and labels: no torch
    {"attnbench", "choices", "errors", "record", "files", "labels", "streams"},
    {"env", "store", "registry", "console", "interrupt", "forkserver"},
    {"variants", "plain", "models", "measure", "data", "imagefolder", "baselines", "peers", "columns"},
    {"tables", "sweep", "catalog"},
    {"plots", "harness"},
    {"inspection", "profiling", "train", "report", "api", "launch"},
    {"evaluation"},
    {"study", "arguments"},  # a training study; the command line's types and checks
    {"cli", "worker", "__main__"},
]


def _level(top: str) -> int:
    for i, names in enumerate(LEVELS):
        if top in names:
            return i
    raise AssertionError(f"attnbench.{top} has no level in LEVELS")


def _imported(node, package: Path) -> list[str]:
    """The package's top-level modules an import statement loads ('attnbench' for root names)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module]
        if node.module == "attnbench":  # from attnbench import store: the submodule, else a root name
            names = [f"attnbench.{a.name}" for a in node.names]
    else:
        return []
    tops = []
    for name in names:
        parts = name.split(".")
        if parts[0] != "attnbench":
            continue
        sub = parts[1] if len(parts) > 1 else ""
        is_module = (package / f"{sub}.py").exists() or (package / sub / "__init__.py").exists()
        tops.append(sub if sub and is_module else "attnbench")
    return tops


def _imports() -> list[tuple[str, str, str]]:
    """(file, importing top-level module, imported one) for every import of the package by the package."""
    package = ROOT / "attnbench"
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).with_suffix("").parts
        top = "attnbench" if rel == ("__init__",) else rel[0]
        for node in ast.walk(ast.parse(path.read_text())):
            found += [(f"{'/'.join(rel)}.py", top, target) for target in _imported(node, package) if target != top]
    return found


def test_no_module_imports_upward():
    upward = [f"{file} imports attnbench.{target}" for file, top, target in _imports()
              if _level(target) > _level(top)]
    assert not upward, "\n".join(upward)


def test_no_modules_import_each_other_in_a_circle():
    """Within a level too: a module and what it imports, however indirectly, never import it back."""
    graph: dict[str, set[str]] = {}
    for _, top, target in _imports():
        graph.setdefault(top, set()).add(target)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            name = todo.pop()
            if name == goal:
                return True
            if name not in seen:
                seen.add(name)
                todo += graph.get(name, ())
        return False

    circles = sorted(f"attnbench.{a} imports attnbench.{b}, which leads back to it" for a in graph for b in graph[a]
                     if reaches(b, a))
    assert not circles, "\n".join(circles)


# A status or a scope is named by its enum (attnbench.choices.Status, Scope), never compared as a bare string
# (SQL text, in single quotes, aside)
BARE_NAME = re.compile(r'\b(status|scope)\b["\'\]\)]*\s*(==|!=|\bin\b)\s*\(?"')


def test_status_and_scope_are_compared_by_their_enums():
    bare = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
            for path in sorted((ROOT / "attnbench").rglob("*.py"))
            for i, line in enumerate(path.read_text().splitlines(), 1) if BARE_NAME.search(line)]
    assert not bare, "\n".join(bare)


def test_the_torch_dtypes_load_without_the_planner():
    """harness and profiling take the dtype map from attnbench.choices, not from the sweep planner."""
    code = ("import sys, torch, attnbench.profiling; from attnbench.choices import DTYPES, torch_dtype; "
            "assert 'attnbench.sweep' not in sys.modules, 'the planner was imported'; "
            "print([str(torch_dtype(d)) for d in DTYPES])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["['torch.float32',", "'torch.bfloat16',", "'torch.float16']"]


def test_the_command_line_parses_calls_and_prints():
    """cli.py holds the parser and the handlers; policy lives in the modules it calls."""
    lines = (ROOT / "attnbench" / "cli.py").read_text().count("\n")
    assert lines <= 500, f"attnbench/cli.py has {lines} lines"

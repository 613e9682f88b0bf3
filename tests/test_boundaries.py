"""Which parts of entropy_serve each part imports: the folders are boundaries, kept by
reading every module's imports (static: `import` statements, lazy ones included)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "entropy_serve"

# part -> the parts of entropy_serve it must never import.
FORBIDDEN = {
    "samplers": ("server", "probes", "trainer", "offline", "commands", "tasks"),
    "kernels": ("server", "probes", "trainer", "offline", "commands", "tasks"),
    "tasks": ("server", "probes", "trainer", "offline", "commands"),
    "probes": ("server", "trainer", "offline", "commands"),
    "server/engine": (
        "server/api",
        "server/core",
        "server/strategies",
        "server/protocol",
        "trainer",
        "offline",
        "commands",
    ),
    "server/protocol": ("server/api", "server/strategies", "trainer", "offline", "commands"),
    "server/core": ("server/api", "trainer", "commands"),  # batches.py answers lines with offline/batch.py
    "server/strategies": ("server/api", "trainer", "offline", "commands"),
    "trainer": ("server/api", "server/strategies/voting", "commands"),
    "offline": ("server/api", "commands"),
}


def imported_parts(module: Path) -> set[str]:
    """The entropy_serve modules `module` imports, as paths ('server/core/planning')."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("entropy_serve"):
            found.add(node.module.replace(".", "/"))
            found.update(f"{node.module}.{alias.name}".replace(".", "/") for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.replace(".", "/") for a in node.names if a.name.startswith("entropy_serve"))
    return {name.removeprefix("entropy_serve/") for name in found}


def modules_of(part: str) -> list[Path]:
    return sorted((PACKAGE / part).rglob("*.py"))


@pytest.mark.parametrize("part", FORBIDDEN)
def test_a_part_never_imports_the_parts_above_it(part):
    assert modules_of(part), f"no modules in {part}"
    crossings = [
        f"{module.relative_to(PACKAGE)} imports {name}"
        for module in modules_of(part)
        for name in sorted(imported_parts(module))
        if any(name == banned or name.startswith(banned + "/") for banned in FORBIDDEN[part])
    ]
    assert crossings == []


def test_the_checker_sees_an_import_across_a_boundary(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from entropy_serve.server.api import app\n")
    assert "server/api/app" in imported_parts(module)


def test_no_module_holds_more_than_300_lines():
    long = {
        str(m.relative_to(PACKAGE)): n for m in PACKAGE.rglob("*.py") if (n := len(m.read_text().splitlines())) > 300
    }
    assert long == {}


# module -> the entropy_serve packages importing it must not pull in (checked at run time:
# transitive imports included). The three imports that crossed a boundary the wrong way.
PULLED_IN_NEVER = {
    "entropy_serve.probes.router": ("entropy_serve.server",),  # the router receives its engine
    "entropy_serve.tasks.voting": ("entropy_serve.server",),  # voting is pure: server, trainer and benchmarks share it
    "entropy_serve.trainer.entropy_control": ("entropy_serve.server.strategies",),
    "entropy_serve.server.api.answer": ("entropy_serve.server.strategies",),  # the HTTP edge answers through core/
}


@pytest.mark.parametrize("module", PULLED_IN_NEVER)
def test_importing_a_part_pulls_in_only_what_it_may(module):
    code = f"import sys, {module}\nprint('\\n'.join(name for name in sys.modules if name.startswith('entropy_serve')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert module in loaded
    assert [name for name in loaded if name.startswith(PULLED_IN_NEVER[module])] == []

"""Who may import whom: the layer rules of docs/architecture.md, as tests.

The rules are import-linter contracts in pyproject.toml (`[tool.importlinter]`); this module runs
them, checks that gateway/, channels/ and classifiers/ have no import cycle at all, and shows on a
copy of the tree that each contract and the cycle check fail when someone adds a forbidden import.
Every check runs in a subprocess with the tree on PYTHONPATH, so the copy is analysed, never the
installed package this test process has already imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "channels", "classifiers")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# Strongly connected components of the module import graph (every import statement, including
# imports inside functions and under TYPE_CHECKING): any component of two or more is a cycle.
CYCLES = """
import sys
import grimp

graph = grimp.build_graph(*sys.argv[1:], include_external_packages=False, cache_dir=None)
index, low, stack, on_stack, cycles = {}, {}, [], set(), []
sys.setrecursionlimit(10000)

def visit(module):
    index[module] = low[module] = len(index)
    stack.append(module)
    on_stack.add(module)
    for imported in graph.find_modules_directly_imported_by(module):
        if imported not in index:
            visit(imported)
            low[module] = min(low[module], low[imported])
        elif imported in on_stack:
            low[module] = min(low[module], index[imported])
    if low[module] == index[module]:
        component = []
        while True:
            member = stack.pop()
            on_stack.discard(member)
            component.append(member)
            if member == module:
                break
        if len(component) > 1:
            cycles.append(sorted(component))

for module in sorted(graph.modules):
    if module not in index:
        visit(module)
for cycle in cycles:
    print(" <-> ".join(cycle))
sys.exit(1 if cycles else 0)
"""


def run(args: list[str], tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        args, cwd=tree, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def lint_imports(tree: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    limit = [arg for c in contracts for arg in ("--contract", c)]
    return run([str(LINT_IMPORTS), "--no-cache", "--no-logo", *limit], tree)


def find_cycles(tree: Path) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-c", CYCLES, *PACKAGES], tree)


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """The three packages' Python files and pyproject.toml, copied: a tree we may break."""
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package,
            tmp_path / package,
            ignore=lambda _dir, names: [
                n for n in names if not (n.endswith(".py") or (Path(_dir) / n).is_dir())
            ],
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(tree: Path, module_path: str, statement: str) -> None:
    path = tree / module_path
    path.write_text(path.read_text() + f"\n{statement}  # added by tests/test_layers.py\n")


def test_every_layer_contract_is_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_gateway_channels_and_classifiers_have_no_import_cycle() -> None:
    result = find_cycles(ROOT)
    assert result.returncode == 0, "import cycles:\n" + result.stdout + result.stderr


# (contract id, module that gains the import, the forbidden import)
FORBIDDEN = [
    ("channels", "channels/smtp.py", "from gateway.stages import parse"),
    ("channels", "channels/imap.py", "from gateway.storage import queries"),
    ("classifiers", "classifiers/types.py", "from gateway import clock"),
    ("pure-rules", "gateway/policy/routing.py", "from gateway.storage import models"),
    ("pure-rules", "gateway/emergency/rules.py", "from gateway.stages import decide"),
    ("storage", "gateway/storage/queries.py", "from gateway.emergency import ledger"),
    ("below-the-pipeline", "gateway/emergency/holds.py", "from gateway.stages import persist"),
    ("below-the-pipeline", "gateway/outbound/mail_sender.py", "from gateway import pipeline"),
    ("api", "gateway/api/views.py", "from gateway.stages import decide"),
]


@pytest.mark.parametrize(("contract", "module_path", "statement"), FORBIDDEN)
def test_a_contract_fails_when_a_forbidden_import_is_added(
    tree_copy: Path, contract: str, module_path: str, statement: str
) -> None:
    assert lint_imports(tree_copy, contract).returncode == 0  # the copy is clean
    add_import(tree_copy, module_path, statement)
    result = lint_imports(tree_copy, contract)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout


def test_the_cycle_check_fails_when_an_import_closes_a_cycle(tree_copy: Path) -> None:
    assert find_cycles(tree_copy).returncode == 0
    # The message values are imported by the pipeline; importing the pipeline back is a cycle.
    add_import(tree_copy, "gateway/message.py", "from gateway import pipeline")
    result = find_cycles(tree_copy)
    assert result.returncode == 1
    assert "gateway.message" in result.stdout and "gateway.pipeline" in result.stdout

"""The package rules of docs/architecture.md ("Packages"), read from every module's imports so they stay true."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OURS = ("commandline", "model", "evaluation", "conversion", "tasks", "workers", "orchestrator")
MAY_IMPORT = {
    "commandline": set(),
    "model": set(),
    "evaluation": set(),
    "tasks": {"model", "evaluation"},
    "workers": {"commandline", "model", "tasks"},
    "conversion": {"commandline", "model", "evaluation", "workers"},
    "orchestrator": {"commandline", "model", "evaluation", "tasks", "workers"},
}
NEVER_IMPORTS = {  # third-party packages that would tie a ground-floor package to a queue, a device or a CLI
    "commandline": {"celery", "kombu", "redis", "torch", "onnxruntime", "numpy"},
    "model": {"celery", "kombu", "redis", "argparse"},
    "evaluation": {"celery", "kombu", "redis", "torch", "torchvision", "onnxruntime", "argparse", "cv2"},
}


def imports(package: str) -> dict[str, set[str]]:
    """Top-level name of every module imported anywhere in the package (inside functions too) -> importing files."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("package", OURS)
def test_a_package_imports_only_the_packages_below_it(package):
    used = imports(package)
    wrong = {name: sorted(files) for name, files in used.items()
             if name in OURS and name != package and name not in MAY_IMPORT[package]}
    assert wrong == {}, f"{package} may import only {sorted(MAY_IMPORT[package])}"


@pytest.mark.parametrize("package", sorted(NEVER_IMPORTS))
def test_the_ground_floor_knows_no_queue_device_or_command_line(package):
    used = imports(package)
    wrong = {name: sorted(files) for name, files in used.items() if name in NEVER_IMPORTS[package]}
    assert wrong == {}


def test_commandline_needs_the_standard_library_alone():
    assert set(imports("commandline")) <= set(sys.stdlib_module_names) | {"__future__"}

"""The layout rules of docs/architecture.md, read from the source (AST): they stay true as the code grows.

- Redis belongs to tasks/: no other package imports redis, reaches into a state's raw client (`.r`) or
  spells a key (tasks/keys.py owns the layout).
- No module changes another module's or object's behaviour by assigning to its attributes (monkeypatching):
  parts are handed in through constructors.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOT_REDIS = ("model", "conversion", "workers", "orchestrator", "evaluation", "bench")
PRODUCT = ("model", "conversion", "workers", "tasks", "orchestrator", "evaluation")
KEY = re.compile(r"^(job|lease|jobs|leases|workers)(:|$)")


def sources(packages) -> list[Path]:
    return sorted(p for package in packages for p in (REPO / package).rglob("*.py"))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _string_starts(node) -> str | None:
    """The literal text a string constant or f-string begins with."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return None


def redis_uses(tree: ast.Module) -> list[str]:
    found = []
    in_fstrings = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    for node in ast.walk(tree):
        if id(node) in in_fstrings:
            continue
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "redis" for a in node.names):
            found.append(f"line {node.lineno}: import redis")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "redis":
            found.append(f"line {node.lineno}: from redis import")
        elif isinstance(node, ast.Attribute) and node.attr == "r":
            found.append(f"line {node.lineno}: .r (a state's raw client)")
        elif isinstance(node, (ast.Constant, ast.JoinedStr)):
            text = _string_starts(node)
            if text is not None and KEY.match(text) and (":" in text or isinstance(node, ast.JoinedStr)):
                found.append(f"line {node.lineno}: key {text!r}")
    return found


@pytest.mark.parametrize("path", sources(NOT_REDIS), ids=lambda p: str(p.relative_to(REPO)))
def test_only_tasks_touches_redis(path):
    assert redis_uses(parse(path)) == []


def imported_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


# torch's documented process settings (torch.backends.cudnn.allow_tf32 and the like) are meant to be assigned
SETTINGS = ("torch.backends.",)


def dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id if isinstance(node, ast.Name) else "?", *reversed(parts)])


def patches(tree: ast.Module) -> list[str]:
    """Assignments to an attribute of an imported module or object, `x.forward = ...`, setattr on an import."""
    imported, found = imported_names(tree), []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            if not isinstance(target, ast.Attribute) or dotted(target).startswith(SETTINGS):
                continue
            base = target.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in imported:
                found.append(f"line {node.lineno}: {base.id}....{target.attr} = ...")
            elif target.attr == "forward":
                found.append(f"line {node.lineno}: .forward = ...")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in imported):
            found.append(f"line {node.lineno}: setattr({node.args[0].id}, ...)")
    return found


@pytest.mark.parametrize("path", sources(PRODUCT), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_patches_another(path):
    assert patches(parse(path)) == []


def test_the_checks_see_what_they_forbid():
    """Each rule catches its own example (a check that could not fail would prove nothing)."""
    bad_redis = ast.parse('import redis\nstate.r.hget(f"job:{j}", "x")\nk = "lease:h:cpu:0"\n')
    assert len(redis_uses(bad_redis)) == 4
    assert redis_uses(ast.parse('report["workers"]\nsweep["jobs"]\n')) == []
    bad_patch = ast.parse("import model.rpn\nfrom x import y\nmodel.rpn.level_top_k = f\ny.attr += 1\n"
                          "head.forward = g\nsetattr(y, 'z', 1)\nimport torch\ntorch.backends.cudnn.benchmark = 1\n")
    assert len(patches(bad_patch)) == 4
    assert patches(ast.parse("self.x = 1\nobj = Thing()\nobj.value = 2\n")) == []

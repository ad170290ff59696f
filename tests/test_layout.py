"""The package's public surface: every module says what it exports (`__all__`), and no
module, test or benchmark imports another module's private or unexported names."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted((SRC / "nftproxy").rglob("*.py"))}


@functools.cache
def _exports(path: Path) -> frozenset[str] | None:
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            value = node.value
            assert isinstance(value, ast.List | ast.Tuple), f"{path}: __all__ is not a list"
            return frozenset(e.value for e in value.elts if isinstance(e, ast.Constant))
    return None


def _imports(path: Path) -> Iterator[tuple[int, str, str]]:
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        if node.module == "nftproxy" or node.module.startswith("nftproxy."):
            for alias in node.names:
                yield node.lineno, node.module, alias.name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_declares_its_exports(name: str) -> None:
    assert _exports(MODULES[name]) is not None, f"{name} has no __all__"


def _users() -> list[Path]:
    found = [*SRC.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    return sorted(found)


def test_imports_of_nftproxy_names_are_exported_ones() -> None:
    wrong = []
    for path in _users():
        for line, module, name in _imports(path):
            if f"{module}.{name}" in MODULES:
                continue  # a submodule
            target = MODULES.get(module)
            exports = _exports(target) if target is not None else None
            private = name.startswith("_") and not name.endswith("__")
            if private or exports is None or name not in exports:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {module}.{name}")
    assert not wrong, "private or unexported names imported:\n" + "\n".join(wrong)


def _private_module_attributes(path: Path) -> Iterator[tuple[int, str]]:
    """`module._name` where `module` is an nftproxy module bound by an import."""
    tree = ast.parse(path.read_text())
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in MODULES:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    modules.add(alias.asname)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.endswith("__")
        ):
            yield node.lineno, f"{node.value.id}.{node.attr}"


def test_no_private_module_attributes_are_reached_from_outside() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in _users()
        for line, name in _private_module_attributes(path)
    ]
    assert not wrong, "private names of other modules used:\n" + "\n".join(wrong)

"""The layout shows the architecture: dependencies between the parts point one way."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.deployment import ROOT

#: Each part, and the parts it must never import. The web process and the worker share only the
#: contract; the contract imports neither side; the operator CLI and the sandbox sit on top.
FORBIDDEN = {
    "app.web": ("workers", "app.ops", "app.sandbox"),
    "app.contract": ("app.web", "app.ops", "app.sandbox", "workers"),
    "workers": ("app.web", "app.ops", "app.sandbox"),
}


def _modules(part: str) -> list[Path]:
    return sorted((ROOT / Path(*part.split("."))).rglob("*.py"))


def _imported(path: Path) -> Iterator[tuple[int, str]]:
    """Every module ``path`` imports, at any depth (inside functions and TYPE_CHECKING too)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # ``from app import web`` imports app.web: name each imported name as a module too.
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _within(module: str, part: str) -> bool:
    return module == part or module.startswith(part + ".")


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_a_part_imports_none_of_the_parts_it_must_not_depend_on(part: str) -> None:
    assert _modules(part), f"no module found for {part}: the scan would pass without reading any"
    breaches = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _modules(part)
        for line, module in _imported(path)
        if any(_within(module, forbidden) for forbidden in FORBIDDEN[part])
    ]

    assert breaches == []

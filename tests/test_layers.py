"""The faces (SMTP, milter, console) turn outcomes into their own replies; no face imports
another, and what they share lives below them (milter.outcome, milter.scan, ...)."""

from __future__ import annotations

import ast
from pathlib import Path

import milter

PACKAGE = Path(milter.__file__).parent
FACES = ("milter.smtp", "milter.milter_protocol", "milter.console")


def _module_files(module: str) -> list[Path]:
    relative = Path(*module.split(".")[1:])
    package = PACKAGE / relative
    if package.is_dir():
        return sorted(package.rglob("*.py"))
    single = package.with_suffix(".py")
    return [single] if single.exists() else []


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _is_within(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def test_no_face_imports_another() -> None:
    found = {face: _module_files(face) for face in FACES}
    assert found["milter.smtp"] and found["milter.milter_protocol"]
    crossings = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for face, paths in found.items()
        for path in paths
        for name in sorted(_imports(path))
        for other in FACES
        if other != face and _is_within(name, other)
    ]
    assert crossings == []

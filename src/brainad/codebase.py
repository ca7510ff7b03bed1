"""Which library files a piece of code runs: the static import closure of a module or script.

One definition serves two auditors: the test that checks every DVC stage's ``deps`` in
``dvc.yaml`` cover the code the stage imports, and the training fingerprint
(:func:`brainad.training.resume.code_checksum`) that refuses to resume a checkpoint written by
other code. Both read the same closure, so they cannot drift apart.

The closure is computed from the source text (``ast``), without importing anything: every
``import brainad...`` / ``from brainad... import ...`` statement counts, at module level or inside
a function, and importing ``brainad.a.b`` also runs the package files ``brainad/__init__.py`` and
``brainad/a/__init__.py``.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "brainad"
PACKAGE_ROOT = Path(__file__).resolve().parent  # .../src/brainad


def module_file(module: str, root: Path = PACKAGE_ROOT) -> Path | None:
    """The source file of ``brainad.x.y`` (``x/y.py`` or ``x/y/__init__.py``), None if neither."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_files(module: str, root: Path) -> list[Path]:
    """``__init__.py`` of every package on the way to ``module`` (they run on import)."""
    parts = module.split(".")
    return [
        p
        for i in range(1, len(parts))
        if (p := root.joinpath(*parts[1:i], "__init__.py")).is_file()
    ]


def _imported_modules(path: Path, module: str | None) -> set[str]:
    """``brainad.*`` modules named by the import statements of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = (module.rsplit(".", 1)[0] if path.name != "__init__.py" else module) if module else ""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # submodule imports
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def _module_name(path: Path, root: Path) -> str:
    relative = path.relative_to(root).with_suffix("")
    parts = [PACKAGE, *relative.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_closure(entries: Iterable[str | Path], root: Path = PACKAGE_ROOT) -> list[Path]:
    """Sorted library files run by ``entries`` (module names ``brainad.x`` or script paths).

    Raises:
        ValueError: an entry names neither an existing script nor a ``brainad`` module.
    """
    todo: list[tuple[Path, str | None]] = []
    for entry in entries:
        if isinstance(entry, Path) or str(entry).endswith(".py"):
            script = Path(entry)
            if not script.is_file():
                raise ValueError(f"import_closure: {script} is not a file")
            todo.append((script, None))
            continue
        path = module_file(str(entry), root)
        if path is None:
            raise ValueError(f"import_closure: {entry!r} is not a module of {root}")
        todo.append((path, str(entry)))
    seen: set[Path] = set()
    while todo:
        path, module = todo.pop()
        for name in _imported_modules(path, module):
            target = module_file(name, root)
            for file in [*_package_files(name, root), *([target] if target else [])]:
                if file not in seen:
                    seen.add(file)
                    todo.append((file, _module_name(file, root)))
        if module is not None:
            seen.add(path)
    return sorted(seen)


def files_digest(files: Iterable[Path], root: Path = PACKAGE_ROOT) -> str:
    """sha256 over the relative paths and bytes of ``files`` (order-independent)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()

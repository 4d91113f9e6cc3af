"""Where an artifact comes from: the code that made it and the data it was made from.

The code of a job is its entry point (a rule's script or a package module) and every module of this package that it
imports, directly or through others, found by reading the import statements (no code is run). Its digest changes
whenever any of those files changes and with no other file, so a rule whose digest is a param reruns exactly when
its code changes, and a checkpoint written by other code is never resumed.

A data source is one record (dataset, root, whether synthetic, manifest and its digest) that travels along with the
artifacts: pretrained weights carry their scans' record, a fine-tuning result its task's and its weights' records.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = "semantic_genesis"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the package (workflow/ in a checkout)


def module_file(package_root: Path, module: str) -> Path | None:
    """The source file of a module of this package under package_root, or None if there is none."""
    base = Path(package_root, *module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(source: Path, module: str | None = None) -> set[str]:
    """Modules of this package that a file imports anywhere in its body (module: its dotted name, for relative
    imports; None for a script outside the package). `from x import y` counts x.y too, in case y is a module."""
    tree = ast.parse(source.read_text(), str(source))
    package = (module if source.name == "__init__.py" else (module or "").rpartition(".")[0]).split(".")
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name == PACKAGE or name.startswith(f"{PACKAGE}.")}


def import_closure(package_root: Path | str, entries: Iterable[str | Path]) -> list[Path]:
    """Files of the entry points (scripts, or package modules by dotted name) and of every package module they
    import, directly or not, with the packages whose __init__ an import runs; sorted."""
    package_root = Path(package_root)
    files: set[Path] = set()
    pending: list[tuple[Path, str | None]] = []
    for entry in entries:
        if isinstance(entry, Path):
            pending.append((entry, None))
        else:
            path = module_file(package_root, entry)
            if path is None:
                raise ValueError(f"module {entry} not found under {package_root}")
            pending.append((path, entry))
    while pending:
        path, module = pending.pop()
        if path in files:
            continue
        files.add(path)
        for name in imported_modules(path, module):
            parts = name.split(".")
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
            for depth in range(1, len(parts) + 1):
                prefix = ".".join(parts[:depth])
                found = module_file(package_root, prefix)
                if found is not None and found not in files:
                    pending.append((found, prefix))
    return sorted(files)


def code_digest(package_root: Path | str, *entries: str | Path) -> str:
    """Digest of the import closure of the entry points: the names (relative to package_root where inside it) and
    bytes of every file."""
    package_root = Path(package_root).resolve()
    digest = hashlib.blake2b(digest_size=8)
    for path in import_closure(package_root, entries):
        resolved = path.resolve()
        name = resolved.relative_to(package_root) if resolved.is_relative_to(package_root) else Path(path.name)
        digest.update(f"{name.as_posix()}\0".encode())
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def module_code_digest(module: str) -> str:
    """code_digest of one module of the installed package: what a trainer stamps on its checkpoints."""
    return code_digest(PACKAGE_ROOT, module)


def file_digest(path: Path | str, chunk_bytes: int = 8 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks (memory stays flat however large the file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def data_record(source: Mapping, manifest: Path | str) -> dict:
    """A data source (dataset, root, synthetic, ...) with its manifest file and that file's SHA-256."""
    if not isinstance(source.get("synthetic"), bool):
        raise ValueError(f"a data source must say whether it is synthetic: {dict(source)}")
    return {**source, "manifest": str(manifest), "manifest_sha256": file_digest(manifest)}


def any_synthetic(records: Iterable[Mapping]) -> bool:
    """Whether any data source along an artifact's lineage is synthetic."""
    return any(record["synthetic"] for record in records)

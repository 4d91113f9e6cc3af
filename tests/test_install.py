"""Installs as users make them: a plain (non-editable) `pip install .` carries what the package reads at run time,
and every third-party import is a declared dependency."""

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions

from conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_a_non_editable_install_finds_its_schema(tmp_path):
    # Built from a copy, so that the checkout gets no build folders.
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "config", source / "config")
    shutil.copytree(REPO / "workflow", source / "workflow", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--target",
        str(site),
    ]
    subprocess.run([*pip, str(source)], check=True, capture_output=True)
    assert (site / "semantic_genesis" / "schema.yaml").is_file() and not (
        site / "semantic_genesis" / "schema.yaml"
    ).is_symlink()
    check = (
        "import sys; sys.path.insert(0, sys.argv[1]); import semantic_genesis.config as c; "
        "assert c.__file__.startswith(sys.argv[1]), c.__file__; "
        "config = c.load_config(); print(config['data']['ct_root'], c.SCHEMA_PATH)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Run away from the checkout, as a user's script would be.
    result = subprocess.run(
        [sys.executable, "-c", check, str(site)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", str(site / "semantic_genesis" / "schema.yaml")]


def imported_distributions() -> dict[str, str]:
    """Distribution of every third-party module the package imports (module -> distribution)."""
    found = {}
    owners = packages_distributions()
    for path in (REPO / "workflow").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("semantic_genesis", "snakemake"):
                    continue
                found[top] = owners[top][0]
    return found


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_import_is_a_declared_dependency():
    declared = {normalised(re.split(r"[=<>!~ \[]", d)[0]) for d in PYPROJECT["project"]["dependencies"]}
    undeclared = {m: d for m, d in imported_distributions().items() if normalised(d) not in declared}
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"
    assert "snakemake" in declared  # the workflow itself

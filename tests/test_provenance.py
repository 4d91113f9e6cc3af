"""Provenance: a job's code is the import closure of its entry point; data records travel with the artifacts."""

import hashlib
import shutil

import pytest
from conftest import REPO

from semantic_genesis.runtime.provenance import (
    code_digest,
    data_record,
    file_digest,
    import_closure,
    module_code_digest,
)

PACKAGE_ROOT = REPO / "workflow"
SCRIPTS = PACKAGE_ROOT / "scripts"


def closure_names(*entries):
    return {str(p.relative_to(PACKAGE_ROOT)) for p in import_closure(PACKAGE_ROOT, entries)}


def test_closure_follows_indirect_imports_and_only_those():
    pretrain = closure_names(SCRIPTS / "pretrain.py")
    # Hand-written lists had missed these: the trainer imports distributed and files, the plan preprocess.ct.
    assert {
        "semantic_genesis/pretrain/distributed.py",
        "semantic_genesis/runtime/files.py",
        "semantic_genesis/networks/unet3d.py",
    } <= pretrain
    assert "semantic_genesis/preprocess/ct.py" in closure_names(SCRIPTS / "plan.py")
    assert "scripts/pretrain.py" in pretrain and "semantic_genesis/__init__.py" in pretrain
    assert not pretrain & {
        "semantic_genesis/synthetic/phantom.py",
        "semantic_genesis/tables/build.py",
        "semantic_genesis/tasks/pxs.py",
    }


def test_relative_imports_of_a_subpackage_and_its_init_are_followed():
    names = closure_names("semantic_genesis.tasks.prepare")
    # `from ..runtime.files import ...` in tasks/prepare.py, `from .pxs import ...`, and the package __init__ files.
    assert {
        "semantic_genesis/runtime/files.py",
        "semantic_genesis/tasks/pxs.py",
        "semantic_genesis/tasks/__init__.py",
    } <= names
    assert "semantic_genesis/__init__.py" in names


def test_digest_changes_with_an_indirect_import_and_not_with_an_unrelated_module(tmp_path):
    copy = tmp_path / "workflow"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    script = copy / "scripts" / "pretrain.py"
    before = code_digest(copy, script)
    assert before == code_digest(PACKAGE_ROOT, SCRIPTS / "pretrain.py"), "the digest does not depend on the location"
    with open(copy / "semantic_genesis" / "tasks" / "pxs.py", "a") as handle:
        handle.write("# unrelated edit\n")
    assert code_digest(copy, script) == before
    with open(copy / "semantic_genesis" / "pretrain" / "distributed.py", "a") as handle:
        handle.write("# edit of a module pretraining imports\n")
    assert code_digest(copy, script) != before


def test_module_digest_is_the_installed_package_closure():
    assert module_code_digest("semantic_genesis.pretrain.trainer") == code_digest(
        PACKAGE_ROOT, "semantic_genesis.pretrain.trainer"
    )
    with pytest.raises(ValueError, match="not found"):
        module_code_digest("semantic_genesis.no_such_module")


def test_file_digest_and_data_record(tmp_path):
    path = tmp_path / "scans.tsv"
    path.write_bytes(b"id\tstatus\n" * 100_000)
    assert file_digest(path, chunk_bytes=4096) == hashlib.sha256(path.read_bytes()).hexdigest()
    record = data_record({"name": "ct", "root": "/data/luna16", "synthetic": False}, path)
    assert record == {
        "name": "ct",
        "root": "/data/luna16",
        "synthetic": False,
        "manifest": str(path),
        "manifest_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    with pytest.raises(ValueError, match="synthetic"):
        data_record({"name": "ct", "root": "/data"}, path)

"""Config validation: defaults, typos, types and consistency checks, each naming the key."""

import pytest
import yaml
from conftest import REPO

from semantic_genesis.config import ConfigError, load_config, validate_config


def test_defaults_fill_an_empty_config():
    config = validate_config({})
    assert config["preprocess"]["ct"]["hu_window"] == [-1000, 1000]
    assert config["preprocess"]["ct"]["splits"]["val"] == ["subset5", "subset6"]
    assert config["data"]["ct_root"] is None


@pytest.mark.parametrize("name", ["config.yaml", "paper_3d.yaml", "paper_2d.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "config" / name)
    assert config["preprocess"]["ct"]["min_slices"] == 96


def test_paper_3d_uses_the_paper_sizes():
    config = load_config(REPO / "config" / "paper_3d.yaml")
    assert config["preprocess"]["ct"]["thumbnail_size"] == [128, 128, 64]
    assert config["preprocess"]["ct"]["spacing_mm"] is None


def test_default_config_file_equals_schema_defaults():
    """config.yaml and the schema's defaults must not drift apart."""
    assert load_config(REPO / "config" / "config.yaml") == validate_config({})


def test_typo_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'preprocess\.ct\.hu_windw' \(did you mean 'hu_window'\?\)"):
        validate_config({"preprocess": {"ct": {"hu_windw": [-1000, 1000]}}})


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"preprocess\.ct\.min_slices"):
        validate_config({"preprocess": {"ct": {"min_slices": "many"}}})


@pytest.mark.parametrize(
    "override, key",
    [
        ({"preprocess": {"ct": {"hu_window": [500, -500]}}}, "preprocess.ct.hu_window"),
        ({"synthetic": {"ct": {"fov_mm": [400, 300]}}}, "synthetic.ct.fov_mm"),
        (
            {"preprocess": {"ct": {"splits": {"train": ["subset0"], "val": ["subset0"], "test": []}}}},
            "preprocess.ct.splits",
        ),
        ({"preprocess": {"ct": {"orientation": "LLS"}}}, "preprocess.ct.orientation"),
        ({"preprocess": {"ct": {"compression": "zip"}}}, "preprocess.ct.compression"),
        ({"discovery": {"ct": {"crop_size": [32, 32, 12]}}}, "discovery.ct.crop_size"),
        ({"pretrain": {"methods": ["models_genesis"]}}, "finetune.methods"),
        ({"tasks": {"ncc": {"cube_size": [30, 32, 16]}}}, "tasks.ncc.cube_size"),
        ({"tasks": {"pxs": {"size": 100}}}, "tasks.pxs.size"),
        ({"tasks": {"lcs": {"volume_size": [64, 64, 40]}}}, "tasks.lcs.volume_size"),
        ({"tasks": {"lcs": {"splits": {"train": [7, 0], "val": [8, 9], "test": [10, 11]}}}}, "tasks.lcs.splits.train"),
    ],
)
def test_inconsistent_values_are_rejected(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(override)


def test_every_schema_key_is_documented():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    readme = (REPO / "config" / "README.md").read_text()

    def keys(node, prefix=""):
        for name, sub in node.get("properties", {}).items():
            yield prefix + name
            yield from keys(sub, prefix + name + ".")

    missing = [k for k in keys(schema) if f"`{k}`" not in readme]
    assert not missing, f"config/README.md does not describe {missing}"


def test_method_names_are_defined_once_and_everything_else_agrees():
    """methods.METHODS is the one definition: the schema's enums and defaults, the tables' row order, colours and
    labels, and the transform policies all name exactly its methods (plus scratch where fine-tuning has it)."""
    from semantic_genesis.methods import METHODS
    from semantic_genesis.pretrain.transforms import POLICIES
    from semantic_genesis.tables.build import METHOD_COLOURS, METHOD_ORDER
    from semantic_genesis.tables.published import METHOD_LABELS

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())["properties"]
    pretrain, finetune = schema["pretrain"]["properties"]["methods"], schema["finetune"]["properties"]["methods"]
    assert pretrain["items"]["enum"] == pretrain["default"] == list(METHODS)
    assert finetune["items"]["enum"] == finetune["default"] == ["scratch", *METHODS]
    assert set(METHOD_ORDER) == set(METHOD_COLOURS) == {"scratch", *METHODS}
    assert {"scratch", *METHODS} <= set(METHOD_LABELS)
    assert {m.policy for m in METHODS.values()} - {None} <= set(POLICIES)

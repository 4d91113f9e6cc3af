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


@pytest.mark.parametrize("name", ["config.yaml", "paper_3d.yaml", "paper_2d.yaml", "benchmark.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "config" / name)
    assert config["preprocess"]["ct"]["min_slices"] == 96


def test_paper_3d_uses_the_paper_sizes():
    config = load_config(REPO / "config" / "paper_3d.yaml")
    assert config["preprocess"]["ct"]["thumbnail_size"] == [128, 128, 64]
    assert config["preprocess"]["ct"]["spacing_mm"] is None


def test_paper_3d_pins_the_papers_and_the_released_codes_values():
    """Each value against the spec (shared/spec/SEMANTIC_GENESIS.md) or the authors' code (docs/fidelity.md)."""
    c = load_config(REPO / "config" / "paper_3d.yaml")
    ct = c["preprocess"]["ct"]
    subsets = [f"subset{i}" for i in range(10)]
    assert ct["splits"] == {"train": subsets[:5], "val": subsets[5:7], "test": subsets[7:]}
    assert (ct["min_slices"], ct["hu_window"], ct["spacing_mm"], ct["thumbnail_size"]) == (
        96,
        [-1000, 1000],
        None,
        [128, 128, 64],
    )
    d = c["discovery"]["ct"]
    assert (d["classes"], d["k"], d["val_neighbours"], d["crop_size"], d["min_distance"]) == (
        44,
        200,
        30,
        [64, 64, 32],
        5,
    )
    assert (d["air_threshold"], d["air_fraction"], d["multi_resolution"], d["selection"]) == (
        0.425,
        0.15,
        True,
        "paper",
    )
    ae = d["autoencoder"]
    assert (ae["base_width"], ae["levels"], ae["skips"], ae["lr"]) == (32, 4, False, 0.001)
    assert (ae["plateau_factor"], ae["plateau_patience"], ae["early_stopping_patience"]) == (0.5, 20, 50)
    pre = c["pretrain"]["ct"]
    assert (pre["base_width"], pre["head_width"], pre["lambda_rec"], pre["lambda_cls"]) == (32, 1024, 1.0, 0.01)
    assert (pre["optimizer"], pre["lr"], pre["batch_size"], pre["schedule"], pre["plateau_patience"]) == (
        "adam",
        0.001,
        8,
        "plateau",
        20,
    )  # the released Keras train.py
    assert (pre["early_stopping_patience"], pre["decay_factor"], pre["data"]) == (50, 0.5, "patches")
    assert pre["method_overrides"]["models_genesis"] == {
        "data": "random_cubes", "optimizer": "sgd", "lr": 1.0, "momentum": 0.9, "batch_size": 6, "schedule": "step"
    }  # fmt: skip
    assert pre["step_size"] == 40 and c["pretrain"]["random_cubes"]["per_scan"] == 32  # int(0.8 * 50); scale 32
    assert c["pretrain"]["restoration_policy"] == "models_genesis"
    tasks, fine = c["tasks"], c["finetune"]
    assert tasks["lcs"]["splits"] == {"train": [0, 99], "val": [100, 114], "test": [115, 129]}
    assert tasks["bms"]["crop_size"] == [100, 100, 50] and tasks["ncc"]["cube_size"] == [64, 64, 32]
    assert (
        tasks["bms"]["test_crops"] == "tiles"
        and tasks["lcs"]["native_z"]
        and tasks["lcs"]["volume_size"][:2]
        == [
            256,
            256,
        ]
    )  # the authors' whole-volume BMS test and in-plane-only LiTS resampling
    assert all(tasks[t]["cube_size"] == [64, 64, 32] for t in ("ncc", "ncs", "lcs", "bms"))
    expected = {"ncc": (1e-3, 24, 10), "ncs": (1e-3, 16, 50), "lcs": (1e-2, 16, 20), "bms": (1e-3, 16, 30)}
    for task, (lr, batch, patience) in expected.items():
        assert (fine[task]["lr"], fine[task]["batch_size"], fine[task]["early_stopping_patience"]) == (
            lr,
            batch,
            patience,
        )
        assert fine[task]["plateau_patience"] == 6


def test_paper_2d_pins_the_papers_values():
    c = load_config(REPO / "config" / "paper_2d.yaml")
    d = c["discovery"]["cxr"]
    assert (d["classes"], d["k"], d["selection"]) == (100, 1000, "paper")  # C = 100, K = 1000 in 2D
    pre = c["pretrain"]["cxr"]
    assert (pre["base_width"], pre["lambda_rec"], pre["lambda_cls"], pre["lr"]) == (64, 1.0, 0.01, 0.001)
    assert c["finetune"]["tasks"] == ["dxc", "pxs"]


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
        ({"preprocess": {"ct": {"thumbnail_size": [64, 64, 36]}}}, "preprocess.ct.thumbnail_size"),
        ({"discovery": {"cxr": {"input_size": 60}}}, "discovery.cxr.input_size"),
        ({"pretrain": {"ct": {"data": "random_cubes"}}}, "pretrain.ct.data"),
        (
            {"pretrain": {"cxr": {"method_overrides": {"semantic_genesis": {"data": "random_cubes"}}}}},
            "pretrain.cxr.method_overrides.semantic_genesis.data",
        ),
        ({"pretrain": {"ct": {"method_overrides": {"models_genesis": {"optimiser": "sgd"}}}}}, "optimiser"),
        ({"pretrain": {"ct": {"method_overrides": {"genesis": {"lr": 1.0}}}}}, "genesis"),
        ({"pretrain": {"methods": ["models_genesis"]}}, "finetune.methods"),
        ({"tasks": {"ncc": {"cube_size": [30, 32, 16]}}}, "tasks.ncc.cube_size"),
        ({"tasks": {"pxs": {"size": 100}}}, "tasks.pxs.size"),
        ({"tasks": {"lcs": {"volume_size": [64, 64, 40]}}}, "tasks.lcs.volume_size"),
        ({"tasks": {"lcs": {"volume_size": [64, 48, 40], "native_z": True}}}, "tasks.lcs.volume_size"),
        ({"tasks": {"bms": {"folds": ["fold_3.csv"]}}}, "tasks.bms.folds"),
        ({"tasks": {"bms": {"test_crops": "whole"}}}, "tasks.bms.test_crops"),
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

    whole = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    schema = whole["properties"]
    pretrain, finetune = schema["pretrain"]["properties"]["methods"], schema["finetune"]["properties"]["methods"]
    assert pretrain["items"] == {"$ref": "#/$defs/method"}
    assert whole["$defs"]["method"]["enum"] == list(METHODS)
    assert finetune["items"]["enum"] == ["scratch", *METHODS]
    # The demo's defaults leave out the two ablations; the paper configs run every method.
    demo = [m for m in METHODS if not m.endswith("_semantics")]
    assert pretrain["default"] == demo and finetune["default"] == ["scratch", *demo]
    for name in ("paper_3d.yaml", "paper_2d.yaml"):
        paper = yaml.safe_load((REPO / "config" / name).read_text())
        assert paper["pretrain"]["methods"] == list(METHODS)
        assert paper["finetune"]["methods"] == ["scratch", *METHODS]
    assert set(METHOD_ORDER) == set(METHOD_COLOURS) == {"scratch", *METHODS}
    assert {"scratch", *METHODS} <= set(METHOD_LABELS)
    assert {m.policy for m in METHODS.values()} - {None} <= set(POLICIES)

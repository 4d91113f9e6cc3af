"""Load and validate the workflow configuration against config/schema.yaml, filling defaults."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .methods import METHODS

# config/schema.yaml, reached through the package's link to it: an installed (non-editable) package carries a copy.
SCHEMA_PATH = Path(__file__).with_name("schema.yaml")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or inconsistent."""


class InfeasibleError(ConfigError):
    """The settings cannot work on this data; the message lists every problem with its key and a fix."""


def _with_defaults(validator_class: type) -> type:
    """Extend a jsonschema validator so that it fills in `default` values while it validates."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _key(path: Any) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    """Turn a jsonschema error into one sentence that names the config key."""
    where = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        parts = []
        for name in extra:
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            parts.append(f"unknown key '{_key([*error.absolute_path, name])}'{hint}")
        return "; ".join(parts) + f". Allowed keys under {where}: {', '.join(allowed)}"
    return f"config key '{where}': {error.message}"


def _check_consistency(config: dict) -> None:
    """Checks a JSON schema cannot express: ordered ranges and disjoint splits."""

    def ordered(path: str, pair: list) -> None:
        if pair[0] > pair[1]:
            raise ConfigError(f"config key '{path}': lower bound {pair[0]} exceeds upper bound {pair[1]}")

    if config["data"]["ncc_candidates"] is not None and config["data"]["ct_root"] is None:
        raise ConfigError(
            "config key 'data.ncc_candidates': set with the synthetic CT set (data.ct_root is null), whose own "
            "candidates would be replaced by another set's; set data.ct_root to the scans it lists, or leave it null"
        )
    syn = config["synthetic"]
    for name in ("fov_mm", "nodules", "nodule_diameter_mm", "noise_hu"):
        ordered(f"synthetic.ct.{name}", syn["ct"][name])
    ordered("synthetic.cxr.follow_ups", syn["cxr"]["follow_ups"])
    lo, hi = config["preprocess"]["ct"]["hu_window"]
    if lo >= hi:
        raise ConfigError(f"config key 'preprocess.ct.hu_window': {lo} must be below {hi}")
    seen: dict[str, str] = {}
    for split, subsets in config["preprocess"]["ct"]["splits"].items():
        for subset in subsets:
            if subset in seen:
                raise ConfigError(
                    f"config key 'preprocess.ct.splits': subset '{subset}' is in both '{seen[subset]}' and '{split}'"
                )
            seen[subset] = split
    if not config["preprocess"]["ct"]["splits"]["train"]:
        raise ConfigError("config key 'preprocess.ct.splits.train': needs at least one subset")
    for name in config["finetune"]["external"]:
        if name == "scratch" or name in METHODS:
            raise ConfigError(
                f"config key 'finetune.external.{name}': the name is taken by a method of this workflow; name the "
                "external model otherwise (e.g. authors_models_genesis)"
            )
    missing = [m for m in config["finetune"]["methods"] if m != "scratch" and m not in config["pretrain"]["methods"]]
    if config["finetune"]["tasks"] and missing:
        raise ConfigError(
            f"config key 'finetune.methods': {missing} start from pretrained weights, so they must be in "
            "pretrain.methods"
        )
    for kind in ("ct", "cxr"):
        section = config["pretrain"][kind]
        for method in config["pretrain"]["methods"]:
            override = section["method_overrides"].get(method, {})
            if METHODS[method].classification and override.get("data", section["data"]) == "random_cubes":
                key = (
                    f"pretrain.{kind}.method_overrides.{method}.data" if "data" in override else f"pretrain.{kind}.data"
                )
                raise ConfigError(
                    f"config key '{key}': {method} trains a classification head, which needs the labelled "
                    "self-discovered patches ('patches'), not random_cubes"
                )
    tasks = config["tasks"]
    for name in ("ncc", "ncs", "lcs", "bms"):
        if any(side % 8 for side in tasks[name]["cube_size"]):
            raise ConfigError(f"config key 'tasks.{name}.cube_size': {tasks[name]['cube_size']} must be divisible by 8")
    for name in ("dxc", "pxs"):
        if tasks[name]["size"] % 32:
            raise ConfigError(f"config key 'tasks.{name}.size': {tasks[name]['size']} must be divisible by 32")
    volume, cube = tasks["lcs"]["volume_size"], tasks["lcs"]["cube_size"]
    resampled = 2 if tasks["lcs"]["native_z"] else 3  # native slices are padded to the cube depth instead
    if any(v % c for v, c in zip(volume[:resampled], cube)):
        raise ConfigError(
            f"config key 'tasks.lcs.volume_size': {volume[:resampled]} must be a multiple of cube_size "
            f"{cube[:resampled]}"
        )
    for split, pair in tasks["lcs"]["splits"].items():
        ordered(f"tasks.lcs.splits.{split}", pair)
    # The autoencoder pools levels - 1 times: its inputs must divide evenly, checked before preprocessing runs.
    inputs = {"ct": ("preprocess.ct.thumbnail_size", config["preprocess"]["ct"]["thumbnail_size"])}
    inputs["cxr"] = ("discovery.cxr.input_size", [config["discovery"]["cxr"]["input_size"]] * 2)
    for kind, (key, sides) in inputs.items():
        divisor = 2 ** (config["discovery"][kind]["autoencoder"]["levels"] - 1)
        if any(side % divisor for side in sides):
            raise ConfigError(
                f"config key '{key}': {sides} must be divisible by {divisor} on every axis: the autoencoder pools "
                f"discovery.{kind}.autoencoder.levels - 1 times"
            )
    # The 3D U-Net pools three times, the 2D ResNet-18 encoder halves five times: patches must divide evenly.
    for kind, divisor, network in (("ct", 8, "3D U-Net"), ("cxr", 32, "2D ResNet-18 U-Net")):
        crop = config["discovery"][kind]["crop_size"]
        if config["pretrain"]["methods"] and any(side % divisor for side in crop):
            raise ConfigError(
                f"config key 'discovery.{kind}.crop_size': {crop} must be divisible by {divisor} on every axis for "
                f"the {network} of pretraining"
            )


def validate_config(config: dict, schema_path: Path = SCHEMA_PATH) -> dict:
    """Validate `config` in place (defaults filled in) and return it; raise ConfigError naming the offending key."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = _Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), _key(e.absolute_path)))
    if errors:
        raise ConfigError("invalid configuration: " + _describe(errors[0]))
    _check_consistency(config)
    return config


def load_config(path: Path | str | None = None, overrides: dict | None = None) -> dict:
    """Read a YAML config (default: none, i.e. all defaults), apply overrides recursively and validate."""
    config = yaml.safe_load(Path(path).read_text()) if path else {}
    config = config or {}
    if overrides:
        merge(config, overrides)
    return validate_config(config)


def merge(base: dict, update: dict) -> dict:
    """Recursively merge `update` into `base` (as Snakemake merges --configfile files) and return base."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base

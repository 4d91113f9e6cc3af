# Semantic Genesis: self-discovery, self-classification and self-restoration pretraining for 3D CT and 2D X-ray.
# Targets: all, preprocess_3d/_2d, discovery_3d/_2d, pretrain_3d/_2d, finetune_3d/_2d, tables; export_models,
# label_efficiency (in all when finetune.label_fractions has several).
import os
import sys
from pathlib import Path

# Rules call the project's package from this checkout, whether or not it was pip-installed (conda users): the
# Snakefile imports it through sys.path, and the rules' script processes inherit PYTHONPATH. (We set the variable,
# we do not require it, so it is not an `envvars:` entry.)
# current_basedir, not basedir: used as a `module` from another workflow, basedir is that workflow's folder.
PACKAGE_DIR = str(Path(workflow.current_basedir) / "workflow")
sys.path.insert(0, PACKAGE_DIR)
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (PACKAGE_DIR, os.environ.get("PYTHONPATH")) if p))

from snakemake.utils import min_version

from semantic_genesis.config import validate_config

min_version("9.0")


configfile: os.path.join(workflow.current_basedir, "config", "config.yaml")


validate_config(config)


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/synthetic.smk"
include: "rules/preprocess.smk"
include: "rules/discovery.smk"
include: "rules/pretrain.smk"
include: "rules/tasks.smk"
include: "rules/finetune.smk"


rule preprocess_3d:
    input:
        "results/ct/scans.tsv",
        ct_preprocessed_files(),
        synthetic_montages("ct"),


rule preprocess_2d:
    input:
        "results/cxr/images.tsv",
        "results/cxr/images.h5",
        synthetic_montages("cxr"),


rule discovery_3d:
    input:
        discovery_outputs("ct"),


rule discovery_2d:
    input:
        discovery_outputs("cxr"),


rule pretrain_3d:
    input:
        pretrain_outputs("ct"),


rule pretrain_2d:
    input:
        pretrain_outputs("cxr"),


rule export_models:
    input:
        exported_models(),


rule finetune_3d:
    input:
        finetune_files("metrics.json", dims=3),


rule finetune_2d:
    input:
        finetune_files("metrics.json", dims=2),


rule all:
    default_target: True
    input:
        rules.preprocess_3d.input,
        rules.preprocess_2d.input,
        rules.discovery_3d.input,
        rules.discovery_2d.input,
        rules.pretrain_3d.input,
        rules.pretrain_2d.input,
        rules.tables.output,
        rules.label_efficiency.output if len(LABEL_FRACTIONS) > 1 else [],

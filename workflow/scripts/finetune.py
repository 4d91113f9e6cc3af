"""Rule finetune: one run of one task from one initialisation, evaluated once on the test split."""

from pathlib import Path

from semantic_genesis.finetune.trainer import FinetuneSettings, finetune
from semantic_genesis.runtime.gpus import claim_gpus
from semantic_genesis.runtime.logs import rule_logging
from semantic_genesis.runtime.provenance import data_record

with rule_logging(snakemake.log[0]), claim_gpus(snakemake.resources.get("gpu", 0)):
    settings = FinetuneSettings.from_dict({**snakemake.params.settings, "num_threads": snakemake.threads})
    pretrained = Path(snakemake.input.architecture).parent if "architecture" in snakemake.input.keys() else None
    sources = [data_record(snakemake.params.source, snakemake.input.index)]
    finetune(snakemake.input.data, pretrained, settings, Path(snakemake.output.metrics).parent, sources)

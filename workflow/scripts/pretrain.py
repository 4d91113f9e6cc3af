"""Rule pretrain: one pretraining method on its samples, patches or random crops (resumes after an interruption).

The rule's gpu resource picks the GPUs (several: one torchrun process each, DistributedDataParallel)."""

from pathlib import Path

from semantic_genesis.pretrain.trainer import PretrainSettings, pretrain
from semantic_genesis.runtime.gpus import claim_gpus
from semantic_genesis.runtime.logs import rule_logging
from semantic_genesis.runtime.provenance import data_record

with rule_logging(snakemake.log[0]), claim_gpus(snakemake.resources.get("gpu", 0)) as gpus:
    # Worker count and threads choose hardware, not results, so they come from the config, not from params.
    execution = {"workers": snakemake.config["pretrain"]["workers"], "num_threads": snakemake.threads}
    settings = PretrainSettings.from_dict({**snakemake.params.settings, **execution})
    sources = [data_record(snakemake.params.source, snakemake.input.manifest)]
    run = dict(restart_stale=True, processes=max(1, len(gpus)), log_path=snakemake.log[0], sources=sources)
    pretrain(snakemake.input.patches, settings, Path(snakemake.output.weights).parent, **run)

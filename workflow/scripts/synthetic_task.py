"""Rules synthetic_ncs and synthetic_task: a target task's synthetic data, written in the public format."""

from semantic_genesis.runtime.logs import rule_logging
from semantic_genesis.tasks.prepare import write_synthetic

with rule_logging(snakemake.log[0]):
    dataset = snakemake.wildcards.get("dataset", "ncs")
    write_synthetic(dataset, snakemake.output[0], snakemake.params, snakemake.input)

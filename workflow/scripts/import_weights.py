"""Rule import_weights: an authors' released checkpoint (finetune.external) as a pretrained folder."""

from pathlib import Path

from semantic_genesis.networks.external import import_weights
from semantic_genesis.runtime.logs import rule_logging

with rule_logging(snakemake.log[0]):
    import_weights(snakemake.input.checkpoint, Path(snakemake.output.weights).parent, "auto")

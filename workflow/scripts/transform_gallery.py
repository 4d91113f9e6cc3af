"""Rule transform_gallery: validation patches next to each restoration transform, as in the paper's Figure 4."""

from semantic_genesis.pretrain.trainer import transform_gallery
from semantic_genesis.runtime.logs import rule_logging

with rule_logging(snakemake.log[0]):
    transform_gallery(
        snakemake.input.patches, snakemake.output[0], snakemake.params.restoration_policy, snakemake.params.transforms
    )

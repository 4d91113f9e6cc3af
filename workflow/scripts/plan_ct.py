"""Rule plan_ct: pseudo-classes from the latents (references, neighbours, coordinates)."""

from semantic_genesis.logs import rule_logging
from semantic_genesis.self_discovery import plan_ct

with rule_logging(snakemake.log[0]):
    plan_ct(snakemake.input.latents, list(snakemake.input.h5), snakemake.params.settings, snakemake.output[0])

"""Rules plan_ct/_cxr: pseudo-classes from the latents (references, neighbours, coordinates)."""

from semantic_genesis.logs import rule_logging
from semantic_genesis.self_discovery import plan

with rule_logging(snakemake.log[0]):
    p = snakemake.params
    plan(p.dims, snakemake.input.latents, list(snakemake.input.h5), p.settings, snakemake.output[0])

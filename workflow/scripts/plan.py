"""Rules plan_ct/_cxr: pseudo-classes from the latents (references, neighbours, coordinates)."""

from semantic_genesis.discovery.feasibility import check_config
from semantic_genesis.discovery.plan import plan
from semantic_genesis.runtime.logs import rule_logging

with rule_logging(snakemake.log[0]):
    p = snakemake.params
    # Every infeasible setting at once, with its fix (the autoencoder checked them too, if it ran).
    check_config(snakemake.input.manifest, snakemake.wildcards.kind, snakemake.config)
    plan(p.dims, snakemake.input.latents, list(snakemake.input.h5), p.settings, snakemake.output[0])

"""Rule plan: pseudo-classes from the latents (references, neighbours, coordinates)."""

from semantic_genesis.discovery.feasibility import check_config
from semantic_genesis.discovery.plan import DiscoverySettings, plan
from semantic_genesis.runtime.logs import rule_logging

with rule_logging(snakemake.log[0]):
    p = snakemake.params
    # Every infeasible setting at once, with its fix (the autoencoder checked them too, if it ran).
    check_config(snakemake.input.manifest, snakemake.wildcards.kind, snakemake.config)
    settings = DiscoverySettings.from_dict(p.settings)
    plan(p.dims, snakemake.input.latents, list(snakemake.input.h5), settings, snakemake.output[0])

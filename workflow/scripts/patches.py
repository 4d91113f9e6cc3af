"""Rule patches: the pseudo-labelled patches in HDF5 and their class montage."""

from semantic_genesis.discovery.patches import patches
from semantic_genesis.discovery.plan import DiscoverySettings
from semantic_genesis.runtime.logs import rule_logging

with rule_logging(snakemake.log[0]):
    p, out = snakemake.params, snakemake.output
    settings = DiscoverySettings.from_dict(p.settings)
    multi_resolution = bool(p.settings["multi_resolution"])
    patches(p.dims, snakemake.input.plan, list(snakemake.input.h5), settings, multi_resolution, out.h5, out.montage)

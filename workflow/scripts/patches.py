"""Rules patches_ct/_cxr: the pseudo-labelled patches in HDF5 and their class montage."""

from semantic_genesis.discovery.patches import patches
from semantic_genesis.runtime.logs import rule_logging

with rule_logging(snakemake.log[0]):
    p, out = snakemake.params, snakemake.output
    patches(p.dims, snakemake.input.plan, list(snakemake.input.h5), p.settings, out.h5, out.montage)

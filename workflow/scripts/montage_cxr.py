"""Rule montage_cxr: a grid of synthetic radiographs with their labels."""

from semantic_genesis.runtime.logs import rule_logging
from semantic_genesis.synthetic.montage import cxr_montage

with rule_logging(snakemake.log[0]):
    cxr_montage(snakemake.input.entries, snakemake.input.images, snakemake.params.images, snakemake.output[0])

"""Rules embed_ct/_cxr: one latent vector per usable scan or radiograph, and their PCA scatter plot."""

from semantic_genesis.discovery.embed import embed, phantom_colours
from semantic_genesis.discovery.inputs import load_inputs
from semantic_genesis.runtime.gpus import claim_gpus
from semantic_genesis.runtime.logs import rule_logging

with rule_logging(snakemake.log[0]), claim_gpus(snakemake.resources.get("gpu", 0)):
    dims = snakemake.params.dims
    manifest, images = load_inputs(dims, snakemake.input.manifest, list(snakemake.input.h5), snakemake.params.size)
    colours = phantom_colours(manifest, snakemake.input.phantoms[0]) if snakemake.input.phantoms else None
    embed(manifest, images, snakemake.input.model, snakemake.output.latents, snakemake.output.plot, colours)

"""Rule embed_ct: one latent vector per usable CT scan, and their PCA scatter plot."""

from semantic_genesis.embedding import ct_inputs, embed, phantom_colours
from semantic_genesis.logs import rule_logging

with rule_logging(snakemake.log[0]):
    manifest, thumbs = ct_inputs(snakemake.input.manifest, list(snakemake.input.h5))
    colours = phantom_colours(manifest, snakemake.input.phantoms[0]) if snakemake.input.phantoms else None
    embed(manifest, thumbs, snakemake.input.model, snakemake.output.latents, snakemake.output.plot, colours)

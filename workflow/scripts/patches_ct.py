"""Rule patches_ct: the pseudo-labelled patches in HDF5 and their class montage."""

from semantic_genesis.logs import rule_logging
from semantic_genesis.self_discovery import patches_ct

with rule_logging(snakemake.log[0]):
    patches_ct(
        snakemake.input.plan,
        list(snakemake.input.h5),
        snakemake.params.settings,
        snakemake.output.h5,
        snakemake.output.montage,
    )

"""Rule preprocess_ct: preprocess the scans of one subset into HDF5 plus a manifest."""

from semantic_genesis.preprocess.ct import CTSettings, preprocess_subset
from semantic_genesis.runtime.logs import rule_logging

with rule_logging(snakemake.log[0]):
    preprocess_subset(
        scans=list(snakemake.input.scans),
        subset=snakemake.wildcards.subset,
        split=snakemake.params.split,
        settings=CTSettings.from_dict(snakemake.params.settings),
        out_h5=snakemake.output.h5,
        out_tsv=snakemake.output.tsv,
        strict=snakemake.params.strict,
        workers=snakemake.threads,
    )

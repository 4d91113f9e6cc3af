"""Rule preprocess_cxr: one shard of the radiographs into its HDF5 file and manifest rows."""

from pathlib import Path

from semantic_genesis.preprocess.cxr import CXRSettings, preprocess_shard
from semantic_genesis.runtime.logs import rule_logging

with rule_logging(snakemake.log[0]):
    preprocess_shard(
        root=Path(snakemake.input.entries).parent,
        settings=CXRSettings.from_dict(snakemake.params.settings),
        out_h5=snakemake.output.h5,
        out_tsv=snakemake.output.tsv,
        shard=int(snakemake.wildcards.shard),
        shards=snakemake.params.shards,
        strict=snakemake.params.strict,
        workers=snakemake.threads,
    )

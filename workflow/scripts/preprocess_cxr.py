"""Rule preprocess_cxr: radiographs to one chunked HDF5 file plus a manifest."""

from pathlib import Path

from semantic_genesis.preprocess.cxr import CXRSettings, preprocess_chestxray14
from semantic_genesis.runtime.logs import rule_logging

with rule_logging(snakemake.log[0]):
    preprocess_chestxray14(
        root=Path(snakemake.input.entries).parent,
        settings=CXRSettings.from_dict(snakemake.params.settings),
        out_h5=snakemake.output.h5,
        out_tsv=snakemake.output.tsv,
        strict=snakemake.params.strict,
        workers=snakemake.threads,
    )

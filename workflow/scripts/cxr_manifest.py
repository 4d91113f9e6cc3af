"""Rule cxr_manifest: the radiograph shards joined into images.h5 (one virtual data set) and images.tsv."""

from pathlib import Path

from semantic_genesis.preprocess.cxr import join_shards
from semantic_genesis.runtime.logs import rule_logging

with rule_logging(snakemake.log[0]):
    root = Path(snakemake.input.entries).parent
    join_shards(list(snakemake.input.h5), list(snakemake.input.tsv), root, snakemake.output.h5, snakemake.output.tsv)

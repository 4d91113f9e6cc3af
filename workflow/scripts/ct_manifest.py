"""Rule ct_manifest: join the per-subset manifests into scans.tsv; fail if no usable scan remains."""

from semantic_genesis.logs import rule_logging
from semantic_genesis.preprocess_ct import gather_manifests

with rule_logging(snakemake.log[0]):
    gather_manifests(list(snakemake.input), snakemake.output[0])

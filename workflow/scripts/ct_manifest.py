"""Rule ct_manifest: join the per-subset manifests into scans.tsv; fail if no usable scan remains."""

from semantic_genesis.preprocess.ct import gather_manifests
from semantic_genesis.runtime.logs import rule_logging

with rule_logging(snakemake.log[0]):
    gather_manifests(list(snakemake.input), snakemake.output[0])

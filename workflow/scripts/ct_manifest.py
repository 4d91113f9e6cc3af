"""Rule ct_manifest: join the per-subset manifests into scans.tsv, keeping NCS test scans out of pretraining."""

from semantic_genesis.preprocess.ct import gather_manifests
from semantic_genesis.runtime.logs import rule_logging
from semantic_genesis.tasks.ncs import held_out_scans

with rule_logging(snakemake.log[0]):
    keep_out = held_out_scans(snakemake.input.ncs) if "ncs" in snakemake.input.keys() else None
    gather_manifests(list(snakemake.input.tsvs), snakemake.output[0], keep_out)

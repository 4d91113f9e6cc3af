"""Rule feasibility: fail within seconds of the manifest when the discovery or pretraining settings cannot work."""

from semantic_genesis.feasibility import check_manifest
from semantic_genesis.logs import rule_logging
from semantic_genesis.self_discovery import discovery_settings

with rule_logging(snakemake.log[0]):
    p = snakemake.params
    settings = discovery_settings(p.settings)
    multi_resolution = p.settings.get("multi_resolution", False)
    check_manifest(
        snakemake.input[0], snakemake.wildcards.kind, settings, p.pretrain_batch, multi_resolution, snakemake.output[0]
    )

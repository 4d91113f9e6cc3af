"""Rules autoencoder_ct/_cxr: train the self-discovery autoencoder (resumes after an interruption)."""

from pathlib import Path

from semantic_genesis.discovery.autoencoder import AutoencoderSettings, train
from semantic_genesis.discovery.feasibility import check_config
from semantic_genesis.discovery.inputs import load_inputs
from semantic_genesis.runtime.gpus import claim_gpus
from semantic_genesis.runtime.logs import rule_logging

with rule_logging(snakemake.log[0]), claim_gpus(snakemake.resources.get("gpu", 0)):
    dims, kind = snakemake.params.dims, snakemake.wildcards.kind
    # Before any training: can the discovery and pretraining settings work on this manifest? They do not change what
    # the autoencoder computes, so they come from the config, not from params (changing them retrains nothing).
    check_config(snakemake.input.manifest, kind, snakemake.config)
    manifest, images = load_inputs(dims, snakemake.input.manifest, list(snakemake.input.h5), snakemake.params.size)
    values = {**snakemake.params.settings, "dims": dims, "num_threads": snakemake.threads}
    train(manifest, images, AutoencoderSettings.from_dict(values), Path(snakemake.output.model).parent)

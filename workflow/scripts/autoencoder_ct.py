"""Rule autoencoder_ct: train the self-discovery autoencoder on the CT thumbnails (resumes after an interruption)."""

from pathlib import Path

from semantic_genesis.autoencoder import AutoencoderSettings
from semantic_genesis.embedding import ct_inputs, train
from semantic_genesis.logs import rule_logging

with rule_logging(snakemake.log[0]):
    manifest, thumbs = ct_inputs(snakemake.input.manifest, list(snakemake.input.h5))
    settings = AutoencoderSettings.from_dict({**snakemake.params.settings, "dims": 3, "num_threads": snakemake.threads})
    train(manifest, thumbs, settings, Path(snakemake.output.model).parent)

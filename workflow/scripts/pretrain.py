"""Rule pretrain: one pretraining method on one kind's patches (resumes after an interruption)."""

from pathlib import Path

from semantic_genesis.logs import rule_logging
from semantic_genesis.pretraining import PretrainSettings, pretrain

with rule_logging(snakemake.log[0]):
    # Worker count and threads choose hardware, not results, so they come from the config, not from params.
    execution = {"workers": snakemake.config["pretrain"]["workers"], "num_threads": snakemake.threads}
    settings = PretrainSettings.from_dict({**snakemake.params.settings, **execution})
    pretrain(snakemake.input.patches, settings, Path(snakemake.output.weights).parent, restart_stale=True)

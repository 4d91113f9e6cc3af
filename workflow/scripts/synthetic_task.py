"""Rule synthetic_task: a target task's synthetic data (LiTS, BraTS or SIIM-ACR), written in the public format."""

from semantic_genesis.runtime.logs import rule_logging
from semantic_genesis.synthetic.tasks import SyntheticTaskSettings, write_synthetic_task

with rule_logging(snakemake.log[0]):
    settings = SyntheticTaskSettings.from_dict(snakemake.params.settings)
    write_synthetic_task(snakemake.wildcards.dataset, snakemake.output[0], settings, snakemake.params.seed)

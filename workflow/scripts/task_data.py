"""Rule task_data: one target task's samples, read from its public format, into the common task file."""

from semantic_genesis.runtime.logs import rule_logging
from semantic_genesis.tasks.prepare import prepare_task

with rule_logging(snakemake.log[0]):
    prepare_task(
        snakemake.wildcards.task,
        dict(snakemake.input),
        snakemake.params.settings,
        snakemake.params.synthetic,
        snakemake.output.h5,
        snakemake.output.index,
        snakemake.output.montage,
    )

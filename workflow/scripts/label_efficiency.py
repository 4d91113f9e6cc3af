"""Rule label_efficiency: metric against label fraction per task, and the labels each method needs to match scratch."""

from pathlib import Path

from semantic_genesis.runtime.logs import rule_logging
from semantic_genesis.tables.label_efficiency import write_label_efficiency

with rule_logging(snakemake.log[0]):
    figures = {Path(p).stem.removeprefix("label_efficiency_"): p for p in snakemake.output.figures}
    write_label_efficiency(snakemake.input.metrics, snakemake.output.table, snakemake.output.text, figures)

"""Rule tables: the paper's result tables, the adding-semantics chart and fine-tuning curves from every run."""

from pathlib import Path

from semantic_genesis.runtime.logs import rule_logging
from semantic_genesis.tables.build import write_results

with rule_logging(snakemake.log[0]):
    curves = {Path(p).stem.removeprefix("curves_"): p for p in snakemake.output.curves}
    write_results(
        snakemake.input.metrics,
        snakemake.input.histories,
        Path(snakemake.output.summary).parent,
        curves,
        snakemake.params.label_fraction,
    )

"""Rule synthetic_ct: write the synthetic LUNA16-format CT set."""

from pathlib import Path

from semantic_genesis.runtime.logs import rule_logging
from semantic_genesis.synthetic.chest import SyntheticCTSettings, write_luna16

with rule_logging(snakemake.log[0]):
    settings = SyntheticCTSettings.from_config(snakemake.params.seed, snakemake.params.settings)
    write_luna16(Path(snakemake.output.annotations).parent, settings, workers=snakemake.threads)

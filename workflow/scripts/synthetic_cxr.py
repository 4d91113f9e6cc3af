"""Rule synthetic_cxr: write the synthetic ChestX-ray14-format radiograph set."""

from pathlib import Path

from semantic_genesis.runtime.logs import rule_logging
from semantic_genesis.synthetic.chest import SyntheticCTSettings, SyntheticCXRSettings, write_chestxray14

with rule_logging(snakemake.log[0]):
    phantom = SyntheticCTSettings.from_config(snakemake.params.seed, snakemake.params.phantom).phantom
    settings = SyntheticCXRSettings.from_config(snakemake.params.seed, snakemake.params.settings, phantom)
    write_chestxray14(Path(snakemake.output.entries).parent, settings, workers=snakemake.threads)

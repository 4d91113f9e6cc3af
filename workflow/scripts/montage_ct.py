"""Rule montage_ct: axial, coronal, sagittal and projection views of a few synthetic CT patients."""

from semantic_genesis.runtime.logs import rule_logging
from semantic_genesis.synthetic.montage import ct_montage

with rule_logging(snakemake.log[0]):
    ct_montage(snakemake.input.scans[: snakemake.params.patients], snakemake.input.phantoms, snakemake.output[0])

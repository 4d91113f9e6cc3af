"""Rule synthetic_ncs: nodule cubes around the synthetic CT's nodules, in the NCS layout (index.csv + NIfTI)."""

from pathlib import Path

from semantic_genesis.runtime.logs import rule_logging
from semantic_genesis.synthetic.ncs import write_synthetic_ncs

with rule_logging(snakemake.log[0]):
    p = snakemake.params
    luna_root = Path(snakemake.input.annotations).parent
    write_synthetic_ncs(luna_root, snakemake.output[0], p.splits, tuple(p.cube_size), p.seed)

"""Rule export_model: a pretrained folder's encoder and U-Net as torch.export programs (plain PyTorch loads them)."""

from pathlib import Path

from semantic_genesis.networks.export import export_pretrained
from semantic_genesis.runtime.logs import rule_logging

with rule_logging(snakemake.log[0]):
    export_pretrained(Path(snakemake.output.encoder).parent)

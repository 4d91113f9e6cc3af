"""Rule random_cubes: random crops of every usable training and validation scan, for the Models Genesis baselines."""

from semantic_genesis.discovery.plan import DiscoverySettings
from semantic_genesis.pretrain.random_cubes import RandomCubeSettings, random_cubes
from semantic_genesis.runtime.logs import rule_logging

with rule_logging(snakemake.log[0]):
    p = snakemake.params
    discovery = DiscoverySettings.from_dict(p.settings["discovery"])
    cubes = RandomCubeSettings.from_dict(p.settings["cubes"])
    random_cubes(p.dims, snakemake.input.manifest, list(snakemake.input.h5), discovery, cubes, snakemake.output[0])

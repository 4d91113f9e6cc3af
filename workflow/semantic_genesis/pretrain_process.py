"""One torchrun process of a multi-process pretraining run: `python -m semantic_genesis.pretrain_process ...`.

A module of its own so that pretraining.py is imported under its own name in every process (its loggers and the
classes its DataLoader workers unpickle stay semantic_genesis.pretraining.*)."""

from semantic_genesis.pretraining import main

main()

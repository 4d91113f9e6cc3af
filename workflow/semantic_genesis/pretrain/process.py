"""One torchrun process of a multi-process pretraining run: `python -m semantic_genesis.pretrain.process ...`.

A module of its own so that pretrain/trainer.py is imported under its own name in every process (its loggers and the
classes its DataLoader workers unpickle stay semantic_genesis.pretrain.trainer.*)."""

from semantic_genesis.pretrain.trainer import main

main()

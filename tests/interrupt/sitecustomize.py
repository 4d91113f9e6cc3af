"""Loaded by the Python processes a test starts with this folder on PYTHONPATH (conftest.interrupt_processes_after):
their training loops stop as if killed after epoch SG_TEST_INTERRUPT_AFTER's checkpoint."""

import os
import sys

_EPOCHS = os.environ.get("SG_TEST_INTERRUPT_AFTER")
if _EPOCHS:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from interruption import stopping_end_epoch

    import semantic_genesis.runtime.training as training

    # Patched before pretrain/trainer.py imports it by name, so the trainer gets the stopping version.
    training.end_epoch = stopping_end_epoch(training.end_epoch, int(_EPOCHS))

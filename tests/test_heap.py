"""The heap setting of training jobs (runtime/heap.py): freed memory is reused instead of faulted in again."""

import subprocess
import sys

import pytest

# What a DataLoader worker does: the Models Genesis transforms of 64x64x32 patches, one after another.
_FAULTS = """
import resource, sys
import numpy as np
from semantic_genesis.pretrain import transforms as T
from semantic_genesis.runtime.heap import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else None
shape = (32, 64, 64)
x = np.random.default_rng(0).random(shape, dtype=np.float32)
plans = [T.draw("models_genesis", shape, T.sample_generator(0, 0, i)) for i in range(40)]
for plan in plans[:5]:
    T.apply(x, plan)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for plan in plans:
    T.apply(x, plan)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reusing_freed_memory_removes_the_page_faults_of_the_transforms():
    _, default = _page_faults("default")
    applied, reused = _page_faults("reuse")
    assert applied == "True"
    # Measured: ~27,600 minor faults for 40 samples with glibc's defaults (~2.7 MB of fresh pages per sample), ~100
    # with reuse.
    assert default > 10_000
    assert reused < default / 20

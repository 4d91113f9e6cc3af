"""Which GPUs one job uses: SLURM's choice on a cluster, a free one locally so concurrent jobs never share a GPU.

Snakemake caps the sum of the jobs' `gpu` resources at the machine's GPUs (profiles/default), but it does not say
which device a job should take. Locally a job therefore locks device files under the temporary folder and publishes
its choice through CUDA_VISIBLE_DEVICES before PyTorch starts CUDA; the locks die with the process.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

NVIDIA_DEVICES = "/proc/driver/nvidia/gpus/*"


def visible_devices() -> list[str] | None:
    """Device ids of CUDA_VISIBLE_DEVICES (set by SLURM or the user), or None when the variable is unset."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    return [d.strip() for d in visible.split(",") if d.strip()]


def machine_gpu_count() -> int:
    """NVIDIA GPUs the driver shows, read without starting CUDA (so the choice can still be published)."""
    return len(glob.glob(NVIDIA_DEVICES))


def _try_locks(candidates: list[str], count: int, lock_dir: Path) -> tuple[list[str], list] | None:
    """Lock `count` free devices among candidates; None (and nothing held) if fewer are free."""
    taken, handles = [], []
    for device in candidates:
        handle = open(lock_dir / f"gpu{device}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        taken.append(device)
        handles.append(handle)
        if len(taken) == count:
            return taken, handles
    for handle in handles:
        handle.close()
    return None


@contextlib.contextmanager
def claim_gpus(count: int, lock_dir: Path | str | None = None, poll_seconds: float = 5.0) -> Iterator[list[str]]:
    """Reserve `count` GPUs for the block and show only them to CUDA; yields their ids ([] = run on the CPU).

    Devices already chosen through CUDA_VISIBLE_DEVICES (SLURM does so for --gpus) are taken as they are. A machine
    without GPUs yields [] whatever `count` is. With count 0 the GPUs are hidden, so "auto" devices mean the CPU.
    """
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    given = visible_devices()
    handles: list = []
    try:
        if given is not None or count == 0:
            chosen = (given or [])[:count]
            if given is not None and len(given) < count:
                log.warning("asked for %d GPUs, CUDA_VISIBLE_DEVICES offers %d: using those", count, len(given))
        else:
            candidates = [str(i) for i in range(machine_gpu_count())]
            count = min(count, len(candidates))
            lock_dir = Path(lock_dir or Path(tempfile.gettempdir()) / f"semantic-genesis-gpus-{os.getuid()}")
            lock_dir.mkdir(parents=True, exist_ok=True)
            while count and (claimed := _try_locks(candidates, count, lock_dir)) is None:
                # Only another program holding a GPU gets here: Snakemake never oversubscribes its own jobs.
                log.info("waiting for %d free GPUs (locks in %s)", count, lock_dir)
                time.sleep(poll_seconds)
            chosen, handles = claimed if count else ([], [])
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
        if chosen:
            log.info("using GPU %s", ", ".join(chosen))
        yield chosen
    finally:
        for handle in handles:
            handle.close()
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous

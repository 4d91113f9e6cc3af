"""One on-disk format for every target task: images and targets per split in an HDF5 file, written atomically.

Layout of `results/tasks/<task>/data.h5`:
- attrs: task, kind ("classification" or "segmentation"), dims (2 or 3), label_names (JSON list), synthetic (bool),
  source (where the data came from), settings (JSON), version
- <split>/images: float16 in [0, 1], [n, z, y, x] (3D) or [n, y, x] (2D); one chunk per sample
- <split>/targets: classification: uint8 [n, labels] (binary, multi-label); segmentation: uint8 [n, *image shape]
- <split>/ids: str [n], the case each sample comes from (scan, candidate, subject or image id)
- <split>/sources: str [n], the id of the sample's scan or image in the pretraining collection (LUNA16 seriesuid,
  ChestX-ray14 image index), "" where the task's data does not name one
for split in train, val, test; attrs `pretraining_overlap` (JSON, see tasks/overlap.py) says how many test cases
pretraining used. Samples are appended one at a time, so real data sets never sit in memory whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..runtime.files import atomic_path, read_h5

SPLITS = ("train", "val", "test")
KINDS = ("classification", "segmentation")


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its dimension, kind, label names and metric."""

    dims: int
    kind: str
    label_names: tuple[str, ...]
    metric: str
    title: str


CXR14_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
TASKS: dict[str, TaskSpec] = {
    "ncc": TaskSpec(3, "classification", ("nodule",), "AUC", "lung nodule false-positive reduction (NCC)"),
    "ncs": TaskSpec(3, "segmentation", ("nodule",), "IoU", "lung nodule segmentation (NCS)"),
    "lcs": TaskSpec(3, "segmentation", ("liver",), "IoU", "liver segmentation (LCS)"),
    "bms": TaskSpec(3, "segmentation", ("whole tumour",), "IoU", "brain tumour segmentation (BMS)"),
    "dxc": TaskSpec(2, "classification", CXR14_LABELS, "AUC", "thorax disease classification (DXC)"),
    "pxs": TaskSpec(2, "segmentation", ("pneumothorax",), "IoU", "pneumothorax segmentation (PXS)"),
}


class TaskWriter:
    """Append samples split by split into a new task file; the file appears only when the block completes.

    Use as a context manager; `add` checks shapes and ranges so that a later stage can trust the file."""

    def __init__(
        self,
        path: Path | str,
        task: str,
        shape: Sequence[int],
        synthetic: bool,
        source: str,
        settings: dict | None = None,
    ):
        self.path, self.task, self.spec, self.shape = Path(path), task, TASKS[task], tuple(shape)
        if len(self.shape) != self.spec.dims:
            raise ValueError(f"{task} is a {self.spec.dims}D task; sample shape {self.shape} does not match")
        self.attrs = dict(
            task=task,
            kind=self.spec.kind,
            dims=self.spec.dims,
            label_names=json.dumps(self.spec.label_names),
            synthetic=synthetic,
            source=source,
            settings=json.dumps(settings or {}, sort_keys=True, default=str),
            version=__version__,
        )
        self.counts = dict.fromkeys(SPLITS, 0)
        self._stack = ExitStack()

    def __enter__(self) -> TaskWriter:
        tmp = self._stack.enter_context(atomic_path(self.path))
        self.h5 = self._stack.enter_context(h5py.File(tmp, "w"))
        self.h5.attrs.update(self.attrs)
        target_shape = (len(self.spec.label_names),) if self.spec.kind == "classification" else self.shape
        for split in SPLITS:
            group = self.h5.create_group(split)
            group.create_dataset(
                "images", (0, *self.shape), np.float16, maxshape=(None, *self.shape), chunks=(1, *self.shape)
            )
            group.create_dataset(
                "targets", (0, *target_shape), np.uint8, maxshape=(None, *target_shape), chunks=(1, *target_shape)
            )
            for name in ("ids", "sources"):
                group.create_dataset(name, (0,), h5py.string_dtype(), maxshape=(None,), chunks=(256,))
        return self

    def add(
        self, split: str, image: np.ndarray, target: np.ndarray | Sequence[int], sample_id: str, source: str = ""
    ) -> None:
        """Append one sample: image in [0, 1] of the task's shape; target = binary labels or a binary mask; source =
        its scan's or image's id in the pretraining collection, "" if unknown."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        image, target = np.asarray(image, np.float32), np.asarray(target)
        if image.shape != self.shape:
            raise ValueError(f"{sample_id}: image shape {image.shape} differs from the task's {self.shape}")
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise ValueError(f"{sample_id}: image values must be finite and within [0, 1]")
        group, n = self.h5[split], self.counts[split]
        expected = group["targets"].shape[1:]
        if target.shape != expected or not np.isin(target, (0, 1)).all():
            raise ValueError(f"{sample_id}: target must be binary of shape {expected}, got {target.shape}")
        values = (("images", image), ("targets", target.astype(np.uint8)), ("ids", sample_id), ("sources", source))
        for name, value in values:
            group[name].resize(n + 1, axis=0)
            group[name][n] = value
        self.counts[split] = n + 1

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)


class TaskData:
    """Read a task file lazily: spec, per-split sizes, samples, all targets."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.h5 = read_h5(self.path)
        self.task = str(self.h5.attrs["task"])
        self.spec = TASKS[self.task]
        self.synthetic = bool(self.h5.attrs["synthetic"])

    def __enter__(self) -> TaskData:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.h5.close()

    def __len__(self) -> int:
        return sum(self.size(split) for split in SPLITS)

    @property
    def pretraining_overlap(self) -> dict | None:
        """How many test cases pretraining used (tasks/overlap.py), None for a file written before it was counted."""
        text = self.h5.attrs.get("pretraining_overlap")
        return json.loads(text) if text is not None else None

    def size(self, split: str) -> int:
        return len(self.h5[split]["ids"])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.h5["train"]["images"].shape[1:])

    def images(self, split: str) -> h5py.Dataset:
        """The split's image dataset (index it to read; float16 in [0, 1])."""
        return self.h5[split]["images"]

    def targets(self, split: str) -> np.ndarray:
        """All targets of a split, in memory (labels are small; masks are uint8)."""
        return self.h5[split]["targets"][()]

    def ids(self, split: str) -> list[str]:
        return self._strings(split, "ids")

    def sources(self, split: str) -> list[str]:
        """Each sample's scan or image id in the pretraining collection ("" where unknown)."""
        return self._strings(split, "sources")

    def _strings(self, split: str, name: str) -> list[str]:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in self.h5[split][name][()]]

    def samples(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
        """(image float32, target, id) of every sample of a split, one at a time."""
        for i, sid in enumerate(self.ids(split)):
            yield self.h5[split]["images"][i].astype(np.float32), self.h5[split]["targets"][i], sid


def task_montage(path: Path | str, out_png: Path | str, per_split: int = 6) -> None:
    """A few samples of each split (mid slice for 3D) with the mask outlined or the labels in the title."""
    # Imported here: the Snakefile imports this module (for TASKS) and should not pay for matplotlib.
    from ..plots import Cell, image_grid

    rows, labels = [], []
    with TaskData(path) as data:
        names = data.spec.label_names
        middle = (lambda a: a[len(a) // 2]) if data.spec.dims == 3 else (lambda a: a)
        for split in SPLITS:
            n = data.size(split)
            picks = np.linspace(0, n - 1, min(per_split, n)).round().astype(int) if n else []
            row = []
            for i in picks:
                image = middle(data.images(split)[int(i)].astype(np.float32))
                target = data.h5[split]["targets"][int(i)]
                if data.spec.kind == "segmentation":
                    mask = middle(target)
                    row.append(Cell(image, f"{mask.mean():.0%} fg", mask=mask))
                else:
                    found = [names[k] for k in np.flatnonzero(target)]
                    row.append(Cell(image, ", ".join(found)[:28] or "negative"))
            rows.append(row)
            labels.append(f"{split} ({n})")
        kind = "synthetic" if data.synthetic else "real"
        title = f"{data.spec.title}: {len(data)} samples of {'x'.join(map(str, data.shape))} ({kind} data)"
    image_grid(rows, out_png, title=title, row_labels=labels, cell_size=(1.8, 2.0))

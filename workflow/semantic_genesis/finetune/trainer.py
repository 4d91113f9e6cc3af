"""Fine-tuning on the target tasks (Models Genesis protocol), from scratch or from a pretrained folder.

Classification reuses the pretrained encoder under a new head (global average pool, FC head_width + ReLU, FC labels;
logits, binary cross-entropy, multi-label); segmentation reuses encoder and decoder (sigmoid output, soft Dice loss).
Every layer trains: Adam, reduce-on-plateau and early stopping on the validation loss; the best validation epoch's
weights are evaluated once on the test split.

Randomness: the labelled training subset depends on label_seed alone (so it is the same for every run and method and
comparisons stay paired; smaller fractions are subsets of larger ones), the model's random initialisation, batch order
and flips on seed = base_seed + run alone. On the CPU a run is bitwise reproducible.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..config import InfeasibleError
from ..networks.genesis import ARCHITECTURE_FILE, build_encoder, build_unet, count_parameters, load_pretrained
from ..plots import Panel, epoch_curves
from ..runtime.files import atomic_path
from ..runtime.provenance import any_synthetic
from ..runtime.training import Stopping, batches, fit, reproducible, resolve_device
from ..settings import Settings
from ..tasks.taskdata import TASKS, TaskData
from . import metrics

log = logging.getLogger(__name__)

SCRATCH = "scratch"
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_metric", "lr", "seconds"]
# Splits up to this size (images, plus masks for segmentation) are read into memory once; larger ones batch by batch.
MAX_IN_MEMORY_BYTES = 2 * 1024**3
DICE_SMOOTH = 1.0


@dataclass(frozen=True)
class FinetuneSettings(Settings):
    """One fine-tuning run. Defaults follow the paper (Adam 1e-3; LCS uses 1e-2, and patience differs per task)."""

    ALIASES: ClassVar[dict[str, str]] = {"seed": "base_seed"}

    task: str
    method: str = SCRATCH
    run: int = 0
    base_seed: int = 0
    base_width: int = 32
    head_width: int = 1024
    lr: float = 1e-3
    batch_size: int = 8
    max_epochs: int = 200
    plateau_factor: float = 0.5
    plateau_patience: int = 6
    early_stopping_patience: int = 20
    min_improvement: float = 1e-4
    label_fraction: float = 1.0
    label_seed: int = 0
    augment_flips: bool = True
    threshold: float = 0.5
    device: str = "auto"
    num_threads: int = 0

    def __post_init__(self) -> None:
        """Reject impossible values before any data is read."""
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], not {self.label_fraction}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), not {self.threshold}")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"plateau_factor must be in (0, 1), not {self.plateau_factor}")
        if self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 0 or self.base_width < 1 or self.head_width < 1:
            raise ValueError("lr, batch_size, base_width and head_width must be positive and max_epochs >= 0")
        if self.run < 0 or self.early_stopping_patience < 1 or self.plateau_patience < 0:
            raise ValueError("run and plateau_patience must be >= 0 and early_stopping_patience >= 1")

    @property
    def seed(self) -> int:
        """The run's seed: initialisation, batch order and flips."""
        return self.base_seed + self.run


def label_subset(n: int, fraction: float, label_seed: int) -> np.ndarray:
    """Sorted indices of the round(fraction * n) training samples (at least 1 when n > 0) that a run may use.

    A permutation seeded by label_seed alone picks them, so every run and method sees the same subset, and the subset of
    a smaller fraction lies inside that of a larger one."""
    if n == 0:
        return np.zeros(0, np.int64)
    count = min(n, max(1, int(round(fraction * n))))
    return np.sort(np.random.default_rng(label_seed).permutation(n)[:count]).astype(np.int64)


class Classifier(nn.Module):
    """Encoder, global average pool, FC head_width + ReLU, FC to one logit per label."""

    def __init__(self, encoder: nn.Module, num_labels: int, head_width: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(
            nn.Linear(encoder.out_channels, head_width), nn.ReLU(inplace=True), nn.Linear(head_width, num_labels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, labels)."""
        bottleneck, _ = self.encoder(x)
        return self.head(bottleneck.flatten(2).mean(2))


def pretrained_architecture(pretrained: Path | str) -> dict:
    """architecture.json of a save_pretrained folder (or of the folder holding a weights file)."""
    path = Path(pretrained)
    folder = path if path.is_dir() else path.parent
    architecture = folder / ARCHITECTURE_FILE
    if not architecture.is_file():
        raise FileNotFoundError(f"{architecture} is missing: {pretrained} is not a folder written by save_pretrained")
    return json.loads(architecture.read_text())


# What a table needs to say about how a pretrained model was trained (keys of its PretrainSettings).
PRETRAINING_KEYS = ("data", "optimizer", "lr", "momentum", "batch_size", "schedule")


def pretraining_record(pretrained: Path | str | None) -> dict | None:
    """Data source, optimiser and transform policy the pretrained weights were trained with (None: scratch)."""
    if pretrained is None:
        return None
    extra = pretrained_architecture(pretrained).get("extra", {})
    if "external" in extra:  # someone else's weights: what they are, not how we would have trained them
        return {"external": extra["external"]}
    settings = extra.get("settings", {})
    # Weights pretrained before data and optimizer were settings were trained on patches with Adam.
    record = {"data": "patches", "optimizer": "adam", **{k: settings[k] for k in PRETRAINING_KEYS if k in settings}}
    if record["optimizer"] != "sgd":
        record.pop("momentum", None)
    return {**record, "policy": extra.get("policy")}


def build_model(settings: FinetuneSettings, pretrained: Path | str | None = None) -> nn.Module:
    """The network fine-tuning starts from, in training mode: pretrained parts (encoder for classification, encoder and
    decoder for segmentation) where given, the rest initialised from settings.seed."""
    spec = TASKS[settings.task]
    if (settings.method == SCRATCH) != (pretrained is None):
        raise ValueError(
            f"method {settings.method!r} {'takes no' if settings.method == SCRATCH else 'needs a'} pretrained folder"
        )
    if pretrained is not None:
        architecture = pretrained_architecture(pretrained)
        if int(architecture.get("dims", -1)) != spec.dims:
            raise ValueError(
                f"{pretrained} holds a {architecture.get('dims')}D network, but task {settings.task} is {spec.dims}D: "
                f"fine-tune {spec.dims}D tasks from {spec.dims}D pretraining"
            )
        extra = architecture.get("extra", {})
        trained_method = extra.get("method")
        if trained_method is not None and trained_method != settings.method and "external" not in extra:
            log.warning("%s was pretrained by %s; the run is labelled %s", pretrained, trained_method, settings.method)
        if spec.kind == "segmentation" and architecture.get("restoration") is False:
            log.warning("%s was pretrained without restoration: its decoder is untrained", pretrained)
    # The random parts come from the run's seed alone; the global generator is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        if spec.kind == "classification":
            encoder = (
                load_pretrained(pretrained, "encoder")
                if pretrained is not None
                else build_encoder(spec.dims, settings.base_width)
            )
            model = Classifier(encoder, len(spec.label_names), settings.head_width)
        else:
            model = (
                load_pretrained(pretrained, "unet")
                if pretrained is not None
                else build_unet(spec.dims, settings.base_width)
            )
    return model.train()


def soft_dice_loss(probabilities: torch.Tensor, targets: torch.Tensor, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """1 - soft Dice over every voxel of the batch (Models Genesis' dice_coef_loss with smoothing 1)."""
    intersection = (probabilities * targets).sum()
    return 1 - (2 * intersection + smooth) / (probabilities.sum() + targets.sum() + smooth)


class SplitReader:
    """Samples of one split (optionally a subset of its rows): in memory when small, else read by index from disk."""

    def __init__(self, data: TaskData, split: str, rows: np.ndarray | None = None):
        self.images_ds, self.targets_ds = data.images(split), data.h5[split]["targets"]
        total = data.size(split)
        self.rows = np.arange(total) if rows is None else np.asarray(rows, np.int64)
        all_ids = data.ids(split)
        self.ids = [all_ids[i] for i in self.rows]
        self.classification = data.spec.kind == "classification"
        # Labels are small: always in memory. Masks only with the images.
        self.labels = self.targets_ds[()][self.rows] if self.classification else None
        per_sample = math.prod(data.shape) * (2 if self.classification else 3)
        self.in_memory = len(self.rows) * per_sample <= MAX_IN_MEMORY_BYTES
        self.images = self.masks = None
        if self.in_memory and len(self.rows):
            self.images = self._read(self.images_ds, self.rows)
            if not self.classification:
                self.masks = self._read(self.targets_ds, self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def _read(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
        """dataset[rows] for rows in any order (HDF5 reads need increasing indices)."""
        if len(rows) == dataset.shape[0] and np.array_equal(rows, np.arange(len(rows))):
            return dataset[()]
        order = np.argsort(rows, kind="stable")
        values = dataset[rows[order]]
        out = np.empty_like(values)
        out[order] = values
        return out

    def read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(images float32 [b, *shape], targets uint8: labels [b, L] or masks [b, *shape]) at positions of the split."""
        positions = np.asarray(positions, np.int64)
        if self.in_memory:
            images = self.images[positions]
            targets = self.labels[positions] if self.classification else self.masks[positions]
        else:
            rows = self.rows[positions]
            images = self._read(self.images_ds, rows)
            targets = self.labels[positions] if self.classification else self._read(self.targets_ds, rows)
        return images.astype(np.float32), targets


def flip_batch(images: np.ndarray, masks: np.ndarray | None, rng: np.random.Generator) -> tuple:
    """Flip each sample along each spatial axis with probability 1/2 (its mask with it)."""
    draws = rng.random((len(images), images.ndim - 1)) < 0.5
    images = images.copy()
    masks = masks.copy() if masks is not None else None
    for i, sample_draws in enumerate(draws):
        axes = tuple(int(a) for a in np.flatnonzero(sample_draws))
        if axes:
            images[i] = np.flip(images[i], axes)
            if masks is not None:
                masks[i] = np.flip(masks[i], axes)
    return images, masks


class Evaluation:
    """Loss and metric of a model on one split, accumulated batch by batch (only label scores are kept, never maps)."""

    def __init__(self, classification: bool, threshold: float):
        self.classification, self.threshold = classification, threshold
        self.n, self.loss_sum = 0, 0.0
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.soft = np.zeros(3)  # soft intersection, sum of probabilities, sum of targets
        self.hard = np.zeros(3, np.int64)  # intersection, predicted and actual voxel counts
        self.case_iou: list[np.ndarray] = []

    def add(self, output: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        """Account for one batch (logits or probabilities, float targets); return its probabilities as float32."""
        if self.classification:
            self.loss_sum += F.binary_cross_entropy_with_logits(output, targets, reduction="sum").item()
            probabilities = torch.sigmoid(output).cpu().numpy().astype(np.float32)
            self.scores.append(probabilities)
            self.labels.append(targets.cpu().numpy().astype(np.uint8))
        else:
            self.soft += [(output * targets).sum().item(), output.sum().item(), targets.sum().item()]
            probabilities = output[:, 0].cpu().numpy().astype(np.float32)
            predicted, actual = probabilities >= self.threshold, targets[:, 0].cpu().numpy() > 0.5
            self.hard += np.array([int(c) for c in metrics.overlap_counts(predicted, actual)])
            self.case_iou.append(metrics.per_case_iou(predicted, actual))
        self.n += len(output)
        return probabilities

    @property
    def loss(self) -> float:
        """Mean binary cross-entropy per sample and label, or 1 - soft Dice over every voxel of the split."""
        if self.n == 0:
            return float("nan")
        if self.classification:
            return self.loss_sum / (self.n * self.scores[0].shape[1])
        intersection, predicted, actual = self.soft
        return float(1 - (2 * intersection + DICE_SMOOTH) / (predicted + actual + DICE_SMOOTH))

    def summary(self) -> dict:
        """Headline metric ("metric") and the detailed scores."""
        if self.classification:
            if self.n == 0:
                return {"metric": float("nan"), "auc": float("nan"), "auc_per_label": []}
            auc, per_label = metrics.mean_auc(np.concatenate(self.labels), np.concatenate(self.scores))
            return {"metric": auc, "auc": auc, "auc_per_label": per_label}
        if self.n == 0:
            return dict.fromkeys(("metric", "iou", "dice", "iou_per_case_mean"), float("nan"))
        iou = metrics.iou_from_counts(*self.hard)
        return {
            "metric": iou,
            "iou": iou,
            "dice": metrics.dice_from_counts(*self.hard),
            "iou_per_case_mean": float(np.concatenate(self.case_iou).mean()),
        }


class Finetuner:
    """Model, optimiser and data of one fine-tuning run."""

    def __init__(self, data: TaskData, pretrained: Path | str | None, settings: FinetuneSettings):
        self.settings, self.spec = settings, data.spec
        self.classification = data.spec.kind == "classification"
        self.device = resolve_device(settings.device)
        self.model = build_model(settings, pretrained).to(self.device)
        architecture = pretrained_architecture(pretrained) if pretrained is not None else {}
        self.base_width = int(architecture.get("base_width", settings.base_width))
        divisor = self.model.encoder.divisor
        if any(size % divisor for size in data.shape):
            raise ValueError(f"{data.path}: sample shape {data.shape} is not divisible by {divisor} (the network)")
        self.subset = label_subset(data.size("train"), settings.label_fraction, settings.label_seed)
        self.splits = {
            "train": SplitReader(data, "train", self.subset),
            "val": SplitReader(data, "val"),
            "test": SplitReader(data, "test"),
        }
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            factor=settings.plateau_factor,
            patience=settings.plateau_patience,
            threshold=settings.min_improvement,
        )

    def tensors(self, images: np.ndarray, targets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(input (N, 1, ...), float targets: (N, L) labels or (N, 1, ...) masks) on the device."""
        x = torch.from_numpy(np.ascontiguousarray(images))[:, None].to(self.device)
        y = torch.from_numpy(np.ascontiguousarray(targets)).float()
        return x, (y if self.classification else y[:, None]).to(self.device)

    def loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.classification:
            return F.binary_cross_entropy_with_logits(output, targets)
        return soft_dice_loss(output, targets)

    @property
    def validates(self) -> bool:
        return len(self.splits["val"]) > 0

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def validate(self) -> dict[str, float]:
        val = self.evaluate("val")
        return {"loss": val.loss, "metric": val.summary()["metric"]}

    def schedule(self, watched: float) -> None:
        self.scheduler.step(watched)

    def describe(self, row: Mapping[str, float]) -> str:
        nan = float("nan")
        return (
            f"train loss {row['train_loss']:.5f}, val loss {row.get('val_loss', nan):.5f}, "
            f"val {self.spec.metric} {row.get('val_metric', nan):.4f}"
        )

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training subset in the order of (seed, epoch); the sample-weighted mean batch loss."""
        self.model.train()
        train = self.splits["train"]
        order = torch.from_numpy(np.random.default_rng([self.settings.seed, 0, epoch]).permutation(len(train)))
        flips = np.random.default_rng([self.settings.seed, 1, epoch])
        total, count = 0.0, 0
        for part in tqdm(batches(len(train), self.settings.batch_size, order), desc=f"epoch {epoch}", leave=False):
            images, targets = train.read(part.numpy())
            if self.settings.augment_flips:
                images, masks = flip_batch(images, None if self.classification else targets, flips)
                targets = targets if self.classification else masks
            x, y = self.tensors(images, targets)
            loss = self.loss(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(part)
            count += len(part)
        return {"loss": total / count if count else float("nan")}

    @torch.no_grad()
    def evaluate(self, split: str, sink: h5py.File | None = None) -> Evaluation:
        """Loss and metric on a split in eval mode; with sink, write its ids, targets and float16 scores there."""
        self.model.eval()
        reader = self.splits[split]
        result = Evaluation(self.classification, self.settings.threshold)
        if sink is not None:
            self._prepare_sink(sink, reader)
        start = 0
        for part in batches(len(reader), self.settings.batch_size):
            images, targets = reader.read(part.numpy())
            x, y = self.tensors(images, targets)
            probabilities = result.add(self.model(x), y)
            if sink is not None:
                sink["scores"][start : start + len(part)] = probabilities.astype(np.float16)
                sink["targets"][start : start + len(part)] = targets
            start += len(part)
        return result

    def _prepare_sink(self, sink: h5py.File, reader: SplitReader) -> None:
        n = len(reader)
        shape = (len(self.spec.label_names),) if self.classification else tuple(reader.images_ds.shape[1:])
        options = {} if self.classification else {"chunks": (1, *shape), "compression": "gzip", "compression_opts": 1}
        if n == 0:
            options = {}
        sink.create_dataset("ids", data=np.array(reader.ids, dtype=object), dtype=h5py.string_dtype())
        sink.create_dataset("targets", (n, *shape), np.uint8, **options)
        sink.create_dataset("scores", (n, *shape), np.float16, **options)


def _clean(value):
    """JSON-safe copy: NaN and infinities become None, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def finetune(
    task_h5: Path | str,
    pretrained: Path | str | None,
    settings: FinetuneSettings,
    out_dir: Path | str,
    sources: Sequence[Mapping] = (),
) -> dict:
    """Fine-tune on task_h5's training split (a label_fraction subset), pick the best validation epoch, test once.

    pretrained: a save_pretrained folder (None for method "scratch"). Writes metrics.json, predictions.h5 (test split),
    history.csv and curves.png into out_dir and returns the metrics.json content.

    sources: the task data's records (provenance.data_record). metrics.json lists them with the records the pretrained
    weights carry in architecture.json, and is synthetic when the task file or any of those records is.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    device = resolve_device(settings.device)
    with TaskData(task_h5) as data, reproducible(settings.num_threads, deterministic=device.type == "cpu"):
        if data.task != settings.task:
            raise ValueError(f"{task_h5} holds task {data.task!r}, but the settings are for {settings.task!r}")
        run = Finetuner(data, pretrained, settings)
        lineage = [*sources, *(pretrained_architecture(pretrained)["extra"].get("data", []) if pretrained else [])]
        synthetic = data.synthetic or any_synthetic(lineage)
        n_train, n_val, n_test = (len(run.splits[s]) for s in ("train", "val", "test"))
        if n_train == 0:
            raise ValueError(f"{task_h5} holds no training samples")
        if n_train < settings.batch_size:
            task = settings.task
            raise InfeasibleError(
                f"{task_h5}: finetune.{task}.batch_size = {settings.batch_size} exceeds the {n_train} labelled "
                f"training samples (finetune.label_fraction = {settings.label_fraction:g} of {data.size('train')}); "
                f"lower finetune.{task}.batch_size to {n_train} or less, or raise finetune.label_fraction"
            )
        log.info(
            "%s / %s run %d (seed %d): %d of %d train (label fraction %g), %d val, %d test samples of %s, "
            "%s parameters, device %s",
            settings.task,
            settings.method,
            settings.run,
            settings.seed,
            n_train,
            data.size("train"),
            settings.label_fraction,
            n_val,
            n_test,
            "x".join(map(str, data.shape)),
            f"{count_parameters(run.model):,}",
            run.device,
        )
        monitored = "val" if n_val else "train"
        if not n_val:
            log.warning("%s has no validation samples: scheduling and early stopping watch the training loss", task_h5)

        stopping = Stopping(settings.max_epochs, settings.early_stopping_patience, settings.min_improvement)
        state = fit(run, stopping, log)
        history = state["history"]
        best_epoch = state["best_epoch"]
        log.info("testing the weights of epoch %d on %d samples", best_epoch, n_test)
        with atomic_path(out_dir / "predictions.h5") as tmp, h5py.File(tmp, "w") as sink:
            sink.attrs.update(
                task=settings.task,
                method=settings.method,
                run=settings.run,
                seed=settings.seed,
                kind=data.spec.kind,
                label_names=json.dumps(data.spec.label_names),
                threshold=settings.threshold,
            )
            test = run.evaluate("test", sink).summary()
        if data.spec.kind == "classification":
            per_label = dict(zip(data.spec.label_names, test["auc_per_label"])) if n_test else {}
            undefined = [name for name, value in per_label.items() if math.isnan(value)]
            if undefined:
                log.warning("test split lacks one class for %s: their AUC is undefined and left out", undefined)
            scores = {"auc": test["auc"], "auc_per_label": per_label, "auc_undefined_labels": undefined}
        else:
            scores = {k: test[k] for k in ("iou", "dice", "iou_per_case_mean")}
        result = _clean(
            {
                "task": settings.task,
                "method": settings.method,
                "run": settings.run,
                "seed": settings.seed,
                "metric": data.spec.metric,
                "value": test["metric"],
                "scores": scores,
                "synthetic": synthetic,
                "data": lineage,
                "label_fraction": settings.label_fraction,
                "n_train": n_train,
                "n_val": n_val,
                "n_test": n_test,
                "best_epoch": best_epoch,
                "epochs": len(history),
                "monitored": f"{monitored}_loss",
                "network": {
                    "dims": data.spec.dims,
                    "base_width": run.base_width,
                    "encoder_out_channels": run.model.encoder.out_channels,
                    "parameters": count_parameters(run.model),
                },
                "seconds": time.perf_counter() - started,
                "pretrained": str(pretrained) if pretrained is not None else None,
                "pretraining": pretraining_record(pretrained),
                "pretraining_overlap": data.pretraining_overlap,
                "settings": asdict(settings),
            }
        )
        log.info("test %s %.4f (%s)", data.spec.metric, test["metric"], json.dumps(_clean(scores)))
    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    with atomic_path(out_dir / "history.csv") as tmp:
        frame.to_csv(tmp, index=False)
    title = f"{settings.task} / {settings.method} run {settings.run}"
    panels = [
        Panel("loss", {"train": "train_loss", "val": "val_loss"}),
        Panel(f"validation {data.spec.metric}", {"": "val_metric"}),
    ]
    epoch_curves(frame, panels, out_dir / "curves.png", f"fine-tuning: {title}", best_epoch, markers=True)
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result

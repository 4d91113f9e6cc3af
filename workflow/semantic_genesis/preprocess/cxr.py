"""2D preprocessing: ChestX-ray14-style radiographs to grayscale [0, 1] at one size, in one chunked HDF5 file."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import __version__
from ..resize import lanczos
from ..runtime.files import atomic_path, read_h5, read_tsv, write_tsv
from ..runtime.parallel import ordered_map
from ..settings import Settings
from .readers import InputError, NoUsableDataError, read_radiograph

log = logging.getLogger(__name__)

# ChestX-ray14's header splits two column names at their inner comma and ends with a comma: keep it byte-compatible.
CXR14_COLUMNS = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
    "",
]
MANIFEST_COLUMNS = ["id", "patient", "split", "labels", "path", "status", "reason", "index", "width", "height"]


@dataclass(frozen=True)
class CXRSettings(Settings):
    """Output size (square, pixels), share of train_val patients held out for validation, and the split seed."""

    ALIASES: ClassVar[dict[str, str]] = {"split_seed": "seed"}

    size: int = 128
    val_fraction: float = 0.1
    seed: int = 0
    check_plausible: bool = True


# A radiograph read by its declared bits spans much of them: one whose 0.5th-99.5th percentiles lie within a tenth of
# its range has fewer significant bits than its file declares (12-bit data in a 16-bit PNG reads nearly black).
MIN_DYNAMIC_RANGE = 0.1
# Black borders exist, but a radiograph mostly at its darkest or brightest value is saturated or mostly blank.
MAX_CLIPPED_FRACTION = 0.5


def implausible_radiograph(image: np.ndarray) -> str | None:
    """Why a [0, 1] image (read by its declared bits) cannot be a radiograph as ChestX-ray14 has them, or None."""
    lo, hi = (float(v) for v in np.percentile(image, [0.5, 99.5]))
    if hi - lo < MIN_DYNAMIC_RANGE:
        return (
            f"its values span only {100 * (hi - lo):.1f}% of the range its bit depth declares (0.5th-99.5th "
            f"percentile {lo:.4f}-{hi:.4f} of 1): fewer significant bits than the file declares (e.g. 12-bit data "
            "in a 16-bit PNG)? Rewrite it at its true depth"
        )
    clipped = max(float((image <= 0.0).mean()), float((image >= 1.0).mean()))
    if clipped > MAX_CLIPPED_FRACTION:
        return f"{100 * clipped:.0f}% of its pixels are at the darkest or brightest value: saturated or mostly blank"
    return None


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Quantise [0, 1] to 8 bits, the depth of ChestX-ray14's PNGs."""
    return np.rint(image * 255.0).astype(np.uint8)


def preprocess_radiograph(path: Path | str, settings: CXRSettings) -> tuple[np.ndarray, tuple[int, int]]:
    """One radiograph as uint8 (size x size) plus its original (width, height); raise InputError if unusable."""
    image = read_radiograph(path)
    if settings.check_plausible and (problem := implausible_radiograph(image)):
        raise InputError(path, f"{problem} (preprocess.cxr.check_plausible: false accepts it)")
    return to_uint8(lanczos(image, settings.size)), (image.shape[1], image.shape[0])


def _process(path: str, settings: CXRSettings) -> tuple[np.ndarray | str, tuple[int, int]]:
    """Worker: the stored image and original (width, height), or the reason the image is unusable."""
    try:
        return preprocess_radiograph(path, settings)
    except InputError as error:
        return error.problem, (0, 0)


def read_chestxray14_index(root: Path | str) -> pd.DataFrame:
    """Image, patient, labels and official split (train_val or test) from Data_Entry_2017.csv and the two lists."""
    root = Path(root)
    entries = pd.read_csv(root / "Data_Entry_2017.csv", dtype={"Image Index": str})
    missing = {"Image Index", "Finding Labels", "Patient ID"} - set(entries.columns)
    if missing:
        raise ValueError(f"{root / 'Data_Entry_2017.csv'}: missing columns {sorted(missing)}")
    # One name per line: a name may hold spaces.
    lists = {
        name: {line.strip() for line in (root / f"{name}_list.txt").read_text().splitlines() if line.strip()}
        for name in ("train_val", "test")
    }
    both = lists["train_val"] & lists["test"]
    if both:
        raise ValueError(
            f"{root}: {len(both)} images are in both train_val_list.txt and test_list.txt, e.g. {sorted(both)[0]}"
        )
    official = np.where(
        entries["Image Index"].isin(lists["test"]),
        "test",
        np.where(entries["Image Index"].isin(lists["train_val"]), "train_val", ""),
    )
    return pd.DataFrame(
        {
            "id": entries["Image Index"],
            "patient": entries["Patient ID"].astype(int),
            "labels": entries["Finding Labels"],
            "official": official,
            "path": [str(root / "images" / name) for name in entries["Image Index"]],
        }
    )


def assign_splits(index: pd.DataFrame, val_fraction: float, seed: int) -> pd.Series:
    """train/val/test per image: test from the official list, val = a seeded share of train_val patients."""
    patients = np.sort(index.patient[index.official == "train_val"].unique())
    n_val = int(round(val_fraction * len(patients)))
    val = set(np.random.default_rng(seed).choice(patients, size=n_val, replace=False).tolist()) if n_val else set()
    split = np.where(index.official == "test", "test", np.where(index.patient.isin(val), "val", "train"))
    return pd.Series(np.where(index.official == "", "", split), index=index.index)


def listed_radiographs(root: Path | str, settings: CXRSettings) -> pd.DataFrame:
    """The manifest before preprocessing: every indexed radiograph with its split; unlisted ones excluded."""
    index = read_chestxray14_index(root)
    index["split"] = assign_splits(index, settings.val_fraction, settings.seed)
    unlisted = index.split == ""
    manifest = index.drop(columns="official").assign(status="ok", reason="", index=-1, width=0, height=0)
    manifest.loc[unlisted, ["status", "reason"]] = ["excluded", "in neither train_val_list.txt nor test_list.txt"]
    return manifest


def shard_rows(manifest: pd.DataFrame, shard: int, shards: int) -> pd.Index:
    """The listed radiographs of one shard: contiguous, near-equal parts of the index order."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} out of range for {shards} shards")
    listed = manifest.index[manifest.status == "ok"]
    return listed[np.array_split(np.arange(len(listed)), shards)[shard]]


def preprocess_shard(
    root: Path | str,
    settings: CXRSettings,
    out_h5: Path | str,
    out_tsv: Path | str,
    shard: int = 0,
    shards: int = 1,
    strict: bool = False,
    workers: int = 1,
) -> pd.DataFrame:
    """Preprocess one shard of the listed radiographs into out_h5 (uint8, n x size x size) and its manifest rows
    (index local to the shard; shard 0 also carries the unlisted rows, so that the joined manifest has each once)."""
    manifest = listed_radiographs(root, settings)
    todo = shard_rows(manifest, shard, shards)
    keep = todo.union(manifest.index[manifest.status != "ok"]) if shard == 0 else todo
    manifest = manifest.loc[keep].sort_index()
    size = settings.size
    log.info("shard %d of %d: %d radiographs; settings %s", shard, shards, len(todo), asdict(settings))
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update(
            settings=json.dumps(asdict(settings)),
            version=__version__,
            layout="images: uint8 (N, size, size), value / 255 in [0, 1]; ids: file names",
            shard=shard,
            shards=shards,
        )
        images = h5.create_dataset(
            "images", shape=(len(todo), size, size), maxshape=(None, size, size), dtype=np.uint8, chunks=(1, size, size)
        )
        ids = []
        work = partial(_process, settings=settings)
        results = ordered_map(work, manifest.path[todo].tolist(), workers)
        for row, (result, (width, height)) in tqdm(
            zip(todo, results), total=len(todo), desc=f"preprocess CXR shard {shard}", unit="image"
        ):
            if isinstance(result, str):
                manifest.loc[row, ["status", "reason"]] = ["excluded", result]
                log.warning("excluded %s: %s", manifest.path[row], result)
                if strict:
                    raise InputError(manifest.path[row], f"{result} (preprocess.strict is true)")
                continue
            images[len(ids)] = result
            manifest.loc[row, ["index", "width", "height"]] = [len(ids), width, height]
            ids.append(manifest.id[row])
        images.resize(len(ids), axis=0)
        h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
    manifest = manifest[MANIFEST_COLUMNS]
    write_tsv(manifest, out_tsv)
    log.info("shard %d: %d usable radiographs, %d excluded", shard, len(ids), (manifest.status != "ok").sum())
    return manifest


def join_shards(
    shard_h5s: list[Path | str], shard_tsvs: list[Path | str], root: Path | str, out_h5: Path | str, out_tsv: Path | str
) -> pd.DataFrame:
    """images.h5 (a virtual data set over the shards' images, in shard order) and the joined manifest (index column
    counting through the shards); fail if nothing usable remains, or none of train_val_list.txt."""
    parts, sources, offset = [], [], 0
    for h5_path, tsv_path in zip(shard_h5s, shard_tsvs):
        part = read_tsv(tsv_path)
        with read_h5(h5_path) as h5:
            stored = h5["ids"].asstr()[()].tolist()
            shape = h5["images"].shape
        ok = part.status == "ok"
        if part.id[ok].tolist() != [stored[i] for i in part["index"][ok]] or ok.sum() != len(stored):
            raise ValueError(f"{tsv_path} and {h5_path} disagree on which image is stored where: rerun that shard")
        part.loc[ok, "index"] += offset
        parts.append(part)
        if len(stored):
            sources.append((Path(h5_path), shape, stored))
        offset += len(stored)
    manifest = pd.concat(parts).reset_index(drop=True)[MANIFEST_COLUMNS]
    if not offset:
        raise NoUsableDataError(f"no usable radiograph remains out of {len(manifest)} under {root}")
    index = read_chestxray14_index(root).set_index("id")
    listed = manifest.id.map(index.official) == "train_val"
    if not (manifest.status[listed] == "ok").any():
        raise NoUsableDataError(
            f"{Path(root) / 'train_val_list.txt'}: none of the {listed.sum()} radiographs it lists is usable "
            "(see the reasons logged by preprocess_cxr): pretraining and DXC fine-tuning train on them; list the "
            "training images there, one file name per line"
        )
    out_h5 = Path(out_h5)
    size = sources[0][1][1:]
    layout = h5py.VirtualLayout(shape=(offset, *size), dtype=np.uint8)
    start = 0
    for path, shape, _ in sources:
        # Relative to images.h5's folder, where HDF5 looks first: the results folder can move as a whole.
        relative = os.path.relpath(path.resolve(), out_h5.resolve().parent)
        layout[start : start + shape[0]] = h5py.VirtualSource(relative, "images", shape=shape)
        start += shape[0]
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h5:
        with read_h5(shard_h5s[0]) as first:
            h5.attrs.update({k: v for k, v in first.attrs.items() if k not in ("shard", "shards")})
        h5.attrs["shards"] = len(shard_h5s)
        h5.create_virtual_dataset("images", layout)
        ids = [sid for _, _, stored in sources for sid in stored]
        h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
    write_tsv(manifest, out_tsv)
    log.info(
        "%d usable radiographs %s from %d shards, %d excluded",
        offset,
        manifest[manifest.status == "ok"].groupby("split").size().to_dict(),
        len(shard_h5s),
        (manifest.status != "ok").sum(),
    )
    return manifest


def preprocess_chestxray14(
    root: Path | str,
    settings: CXRSettings,
    out_h5: Path | str,
    out_tsv: Path | str,
    strict: bool = False,
    workers: int = 1,
) -> pd.DataFrame:
    """Every listed radiograph into one shard beside out_h5, joined into images.h5 and the manifest (tests, scripts)."""
    shard_h5, shard_tsv = Path(out_h5).with_name("shard-0.h5"), Path(out_tsv).with_name("shard-0.tsv")
    preprocess_shard(root, settings, shard_h5, shard_tsv, 0, 1, strict, workers)
    return join_shards([shard_h5], [shard_tsv], root, out_h5, out_tsv)


class PreprocessedCXR:
    """Read access to images.h5; images come back as float32 in [0, 1]."""

    def __init__(self, path: Path | str):
        self._h5 = read_h5(path)
        self.ids = [i.decode() if isinstance(i, bytes) else i for i in self._h5["ids"][()]]
        images = self._h5["images"]
        # A missing shard would read as fill values without an error: check every source of the virtual data set.
        for source in images.virtual_sources() if images.is_virtual else ():
            shard = Path(path).resolve().parent / source.file_name
            if not shard.is_file():
                raise FileNotFoundError(f"{path}: its shard {shard} is missing; rerun preprocess_cxr")

    def __enter__(self) -> PreprocessedCXR:
        return self

    def __exit__(self, *exc) -> None:
        self._h5.close()

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, index: int) -> np.ndarray:
        """Image number `index` (the manifest's index column) in [0, 1]."""
        return self._h5["images"][index].astype(np.float32) / 255.0

"""Write the synthetic chest data set in the real datasets' on-disk formats (LUNA16 and ChestX-ray14)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from PIL import Image
from tqdm import tqdm

from ..preprocess.cxr import CXR14_COLUMNS
from ..runtime.files import atomic_path
from ..runtime.parallel import ordered_map
from .phantom import (
    LABELS,
    PatientParams,
    PhantomSettings,
    draw_patient,
    radiograph_field_mm,
    render_ct,
    render_radiograph,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticCTSettings:
    """How many synthetic CT patients to write and how they are spread over LUNA16-style subsets."""

    seed: int = 2020
    patients: int = 30
    subsets: int = 10
    false_positives_per_scan: int = 20
    phantom: PhantomSettings = PhantomSettings()

    @classmethod
    def from_config(cls, seed: int, cfg: dict) -> SyntheticCTSettings:
        """Build from `synthetic.seed` and the `synthetic.ct` config section."""
        findings = cfg["findings"]
        phantom = PhantomSettings(
            matrix=cfg["matrix"],
            fov_mm=tuple(cfg["fov_mm"]),
            slice_mm=tuple(cfg["slice_mm"]),
            thick_slice_fraction=cfg["thick_slice_fraction"],
            nodules=tuple(cfg["nodules"]),
            nodule_diameter_mm=tuple(cfg["nodule_diameter_mm"]),
            noise_hu=tuple(cfg["noise_hu"]),
            p_cardiomegaly=findings["cardiomegaly"],
            p_effusion=findings["effusion"],
            p_pneumothorax=findings["pneumothorax"],
            p_emphysema=findings["emphysema"],
        )
        return cls(
            seed=seed,
            patients=cfg["patients"],
            subsets=cfg["subsets"],
            false_positives_per_scan=cfg["false_positives_per_scan"],
            phantom=phantom,
        )


@dataclass(frozen=True)
class SyntheticCXRSettings:
    """How many synthetic radiograph patients, follow-ups per patient, image size and test share."""

    seed: int = 2020
    patients: int = 120
    follow_ups: tuple[int, int] = (1, 3)
    size: int = 256
    test_fraction: float = 0.2
    phantom: PhantomSettings = PhantomSettings()

    @classmethod
    def from_config(cls, seed: int, cfg: dict, phantom: PhantomSettings) -> SyntheticCXRSettings:
        """Build from `synthetic.seed`, the `synthetic.cxr` section and the CT phantom settings (same anatomy model)."""
        return cls(
            seed=seed,
            patients=cfg["patients"],
            follow_ups=tuple(cfg["follow_ups"]),
            size=cfg["size"],
            test_fraction=cfg["test_fraction"],
            phantom=phantom,
        )


def series_uid(seed: int, index: int) -> str:
    """A stable DICOM-style UID (2.25.<integer> form) for synthetic patient `index`; no RNG, so the DAG can know it."""
    digest = hashlib.sha256(f"semantic-genesis/ct/{seed}/{index}".encode()).hexdigest()
    return f"2.25.{int(digest[:30], 16)}"


def ct_scan(seed: int, subsets: int, index: int) -> tuple[str, str]:
    """(subset, seriesuid) of synthetic CT patient `index`; patients are dealt to subsets in turn."""
    return f"subset{index % subsets}", series_uid(seed, index)


def synthetic_ct_scans(seed: int, patients: int, subsets: int) -> list[tuple[str, str]]:
    """(subset, seriesuid) of every synthetic CT patient."""
    return [ct_scan(seed, subsets, i) for i in range(patients)]


def _patient_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def world_of_voxel(p: PatientParams, index_zyx: np.ndarray) -> np.ndarray:
    """World (x, y, z) mm of voxel indices [z, y, x] (identity direction, as written)."""
    return np.asarray(p.origin_xyz) + index_zyx[..., ::-1] * np.asarray(p.spacing_xyz)


def _false_positives(p: PatientParams, labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Non-nodule candidates: mostly vessel voxels (the usual CAD false positives), some parenchyma."""
    picks = []
    for label, share in ((LABELS["vessel"], 0.7), (LABELS["lung_right"], 0.15), (LABELS["lung_left"], 0.15)):
        voxels = np.flatnonzero(labels == label)
        n = min(len(voxels), int(round(count * share)))
        if n:
            picks.append(rng.choice(voxels, size=n, replace=False))
    if not picks:
        return np.zeros((0, 3))
    flat = np.concatenate(picks)
    return world_of_voxel(p, np.stack(np.unravel_index(flat, labels.shape), axis=-1).astype(float))


def _write_image(array: np.ndarray, p: PatientParams, path: Path, compress: bool) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(p.spacing_xyz)
    image.SetOrigin(p.origin_xyz)
    sitk.WriteImage(image, str(path), useCompression=compress)


def _write_ct_patient(index: int, settings: SyntheticCTSettings, root: Path) -> dict:
    """Draw, render and write one CT patient; return its table rows."""
    subset, uid = ct_scan(settings.seed, settings.subsets, index)
    p = draw_patient(_patient_rng(settings.seed, 0, index), settings.phantom)
    hu, labels = render_ct(p)
    _write_image(hu, p, root / subset / f"{uid}.mhd", compress=False)
    _write_image(labels, p, root / "phantom-labels" / f"{uid}.mhd", compress=True)
    fp = _false_positives(p, labels, settings.false_positives_per_scan, _patient_rng(settings.seed, 2, index))
    annotations = [
        dict(
            seriesuid=uid,
            coordX=n.center_mm[0],
            coordY=n.center_mm[1],
            coordZ=n.center_mm[2],
            diameter_mm=n.diameter_mm,
        )
        for n in p.nodules
    ]
    candidates = [
        dict(seriesuid=uid, coordX=x, coordY=y, coordZ=z, **{"class": label})
        for label, points in ((1, [n.center_mm for n in p.nodules]), (0, fp))
        for x, y, z in points
    ]
    phantom = dict(
        seriesuid=uid,
        subset=subset,
        slices=hu.shape[0],
        rows=hu.shape[1],
        cols=hu.shape[2],
        spacing_x=p.spacing_xyz[0],
        spacing_y=p.spacing_xyz[1],
        spacing_z=p.spacing_xyz[2],
        nodules=len(p.nodules),
        findings="|".join(p.findings) or "No Finding",
        lung_fraction=float(np.isin(labels, [LABELS["lung_right"], LABELS["lung_left"]]).mean()),
        liver_fraction=float((labels == LABELS["liver"]).mean()),
        padding_hu=p.padding_hu,
    )
    return dict(annotations=annotations, candidates=candidates, phantom=[phantom])


def write_luna16(root: Path | str, settings: SyntheticCTSettings, workers: int = 1) -> None:
    """Write <root>/subsetN/<uid>.mhd/.raw, annotations.csv, candidates_V2.csv, label maps and phantoms.tsv."""
    root = Path(root)
    for k in range(settings.subsets):
        (root / f"subset{k}").mkdir(parents=True, exist_ok=True)
    (root / "phantom-labels").mkdir(parents=True, exist_ok=True)
    work = partial(_write_ct_patient, settings=settings, root=root)
    results = list(
        tqdm(
            ordered_map(work, range(settings.patients), workers),
            total=settings.patients,
            desc="synthetic CT",
            unit="patient",
        )
    )
    tables = {key: [row for r in results for row in r[key]] for key in ("annotations", "candidates", "phantom")}
    for row in tables["phantom"]:
        log.info(
            "%s/%s: %dx%dx%d voxels, %d nodules, %s",
            row["subset"],
            row["seriesuid"],
            row["cols"],
            row["rows"],
            row["slices"],
            row["nodules"],
            row["findings"],
        )
    # CSVs last and atomically: their presence means every scan they name is complete.
    for name, key, columns in (
        ("phantoms.tsv", "phantom", None),
        ("annotations.csv", "annotations", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]),
        ("candidates_V2.csv", "candidates", ["seriesuid", "coordX", "coordY", "coordZ", "class"]),
    ):
        frame = pd.DataFrame(tables[key], columns=columns)
        with atomic_path(root / name) as tmp:
            frame.to_csv(tmp, sep="\t" if name.endswith(".tsv") else ",", index=False)
    log.info(
        "wrote %d CT patients, %d nodules, %d candidates under %s",
        settings.patients,
        len(tables["annotations"]),
        len(tables["candidates"]),
        root,
    )


def synthetic_cxr_images(settings: SyntheticCXRSettings) -> list[tuple[int, int]]:
    """(patient id, follow-up number) of every synthetic radiograph, drawn from their own stream."""
    rng = np.random.default_rng([settings.seed, 3])
    lo, hi = settings.follow_ups
    counts = rng.integers(max(lo, 1), max(hi, 1) + 1, size=settings.patients)
    return [(pid + 1, f) for pid, n in enumerate(counts) for f in range(n)]


def cxr_image_name(patient: int, follow_up: int) -> str:
    """ChestX-ray14 file name: 8-digit patient id, 3-digit follow-up."""
    return f"{patient:08d}_{follow_up:03d}.png"


def _write_cxr_patient(item: tuple[int, int], settings: SyntheticCXRSettings, images: Path) -> list[dict]:
    """Draw one radiograph patient and write its follow-up images; return their Data_Entry rows."""
    patient, follow_ups = item
    rng = _patient_rng(settings.seed, 4, patient)
    p = draw_patient(rng, settings.phantom)
    age, sex = int(rng.integers(18, 90)), str(rng.choice(["M", "F"]))
    spacing = round(radiograph_field_mm(p) / settings.size, 3)
    rows = []
    for f in range(follow_ups):
        # A follow-up is the same anatomy imaged again: new noise, same findings.
        visit = dataclasses.replace(p, noise_seed=int(rng.integers(2**31)))
        image, _ = render_radiograph(visit, settings.size)
        name = cxr_image_name(patient, f)
        Image.fromarray(np.rint(image * 255).astype(np.uint8), mode="L").save(images / name)
        rows.append(
            {
                "Image Index": name,
                "Finding Labels": "|".join(p.findings) or "No Finding",
                "Follow-up #": f,
                "Patient ID": patient,
                "Patient Age": age + f,
                "Patient Gender": sex,
                "View Position": "PA",
                "OriginalImage[Width": settings.size,
                "Height]": settings.size,
                "OriginalImagePixelSpacing[x": spacing,
                "y]": spacing,
                "": "",
            }
        )
    return rows


def write_chestxray14(root: Path | str, settings: SyntheticCXRSettings, workers: int = 1) -> None:
    """Write images/*.png (8-bit), Data_Entry_2017.csv, train_val_list.txt and test_list.txt, split by patient."""
    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    per_patient = pd.Series([p for p, _ in synthetic_cxr_images(settings)]).value_counts().sort_index()
    work = partial(_write_cxr_patient, settings=settings, images=images)
    rows = [
        row
        for batch in tqdm(
            ordered_map(work, list(per_patient.items()), workers),
            total=len(per_patient),
            desc="synthetic CXR",
            unit="patient",
        )
        for row in batch
    ]
    entries = pd.DataFrame(rows, columns=CXR14_COLUMNS)
    rng = np.random.default_rng([settings.seed, 5])
    patients = per_patient.index.to_numpy()
    n_test = max(1, int(round(settings.test_fraction * len(patients))))
    test_patients = set(rng.choice(patients, size=n_test, replace=False).tolist())
    is_test = entries["Patient ID"].isin(test_patients)
    for name, names in (
        ("train_val_list.txt", entries["Image Index"][~is_test]),
        ("test_list.txt", entries["Image Index"][is_test]),
    ):
        with atomic_path(root / name) as tmp:
            tmp.write_text("".join(f"{n}\n" for n in sorted(names)))
    with atomic_path(root / "Data_Entry_2017.csv") as tmp:
        entries.to_csv(tmp, index=False)
    log.info(
        "wrote %d radiographs of %d patients (%d test patients) under %s", len(entries), len(patients), n_test, root
    )

"""The published numbers the comparison tables show beside ours, as data, with where each number comes from.

All values are percentages (AUC or IoU x 100), mean and standard deviation over the papers' repeated runs. They are
transcribed from the project spec (shared/spec/SEMANTIC_GENESIS.md, section 7), which took them from:

- [SG] Haghighi, Hosseinzadeh Taher, Zhou, Gotway, Liang: "Learning Semantics-Enriched Representation via
  Self-discovery, Self-classification, and Self-restoration", MICCAI 2020: the 3D comparison table (every row of
  PUBLISHED_3D) and the "adding semantics" bar figure (ADDING_SEMANTICS; values read off the bars, so about +-0.3 and
  without a std).
- [MG] Zhou et al.: "Models Genesis", MICCAI 2019 / Medical Image Analysis 2021: the 2D baselines for thorax disease
  classification (DXC) in PUBLISHED_2D, mean +- std as plotted by the authors' `figures/plotsuperbar.m`.

Nothing here is invented: a (method, task) pair the papers do not report is simply absent, and the tables show "–"
for it. In particular there are no published Semantic Genesis 2D numbers available to us and no published numbers at
all for pneumothorax segmentation (PXS).
"""

from __future__ import annotations

from dataclasses import dataclass

# Method keys: ours are those of semantic_genesis.methods.METHODS plus "scratch" (random initialisation); the others
# name rows that only exist in the papers.

# [SG] 3D comparison table; method -> task -> (mean, std) in percent. NCC: AUC; NCS, LCS, BMS: IoU.
PUBLISHED_3D: dict[str, dict[str, tuple[float, float]]] = {
    "scratch": {"ncc": (94.25, 5.07), "ncs": (74.05, 1.97), "lcs": (79.76, 5.42), "bms": (59.87, 4.04)},  # Random init
    "niftynet": {"ncc": (94.14, 4.57), "ncs": (52.98, 2.05), "lcs": (83.23, 1.05), "bms": (60.78, 1.60)},
    "medicalnet": {"ncc": (95.80, 0.51), "ncs": (75.68, 0.32), "lcs": (85.52, 0.58), "bms": (66.09, 1.35)},
    "inflated_3d": {"ncc": (98.26, 0.27), "ncs": (71.58, 0.55), "lcs": (70.65, 4.26), "bms": (67.83, 0.75)},
    "inpainting": {"ncc": (95.12, 1.74), "ncs": (76.02, 0.55), "lcs": (81.36, 4.83), "bms": (61.38, 3.84)},
    "patch_shuffling": {"ncc": (94.90, 1.18), "ncs": (75.55, 0.82), "lcs": (82.82, 2.35), "bms": (59.05, 2.83)},
    "rotation": {"ncc": (94.42, 1.78), "ncs": (76.13, 0.61), "lcs": (83.15, 1.41), "bms": (60.53, 5.22)},
    "rubiks_cube": {"ncc": (96.24, 1.27), "ncs": (72.87, 0.16), "lcs": (75.59, 0.20), "bms": (62.75, 1.93)},
    "models_genesis": {"ncc": (98.07, 0.59), "ncs": (77.41, 0.40), "lcs": (85.10, 2.15), "bms": (67.96, 1.29)},
    "self_classification": {"ncc": (97.49, 0.45), "ncs": (76.93, 0.87), "lcs": (84.14, 1.78), "bms": (64.02, 0.98)},
    "semantic_genesis": {"ncc": (98.46, 0.30), "ncs": (77.33, 0.52), "lcs": (86.53, 1.30), "bms": (68.82, 0.38)},
}

# [SG] "Adding semantics" figure: means read off the bars (APPROXIMATE, about +-APPROXIMATE_TOLERANCE; no std).
# Models Genesis + semantics is Semantic Genesis itself: its numbers are the semantic_genesis row of PUBLISHED_3D, and
# the bases (in-painting, patch shuffling, Models Genesis) are their rows there too.
ADDING_SEMANTICS: dict[str, dict[str, float]] = {
    "inpainting_semantics": {"ncc": 97.3, "ncs": 77.5, "lcs": 84.4, "bms": 68.2},
    "patch_shuffling_semantics": {"ncc": 96.6, "ncs": 76.9, "lcs": 85.0, "bms": 67.8},
}
APPROXIMATE_TOLERANCE = 0.3

# [MG] 2D baselines; method -> task -> (mean, std) in percent. DXC: mean AUC over the 14 ChestX-ray14 labels.
# No Semantic Genesis 2D numbers and nothing for PXS: left out on purpose.
PUBLISHED_2D: dict[str, dict[str, tuple[float, float | None]]] = {
    "scratch": {"dxc": (69.15, 0.77)},
    "imagenet": {"dxc": (75.55, 0.48)},
    "genesis_ct_2d": {"dxc": (74.99, 0.36)},
    "genesis_xray_2d": {"dxc": (75.48, 0.13)},
}

# Pretrained models we cannot download or run here: their table rows show the published numbers only, marked so.
PUBLISHED_ONLY_3D: tuple[str, ...] = ("niftynet", "medicalnet", "inflated_3d")
# 2D baselines of [MG] we do not reproduce (ImageNet weights, the Models Genesis 2D releases): published numbers only.
PUBLISHED_ONLY_2D: tuple[str, ...] = ("imagenet", "genesis_ct_2d", "genesis_xray_2d")
PUBLISHED_ONLY: frozenset[str] = frozenset(PUBLISHED_ONLY_3D + PUBLISHED_ONLY_2D)

METHOD_LABELS: dict[str, str] = {
    "scratch": "Random init",
    "niftynet": "NiftyNet",
    "medicalnet": "MedicalNet",
    "inflated_3d": "Inflated 3D",
    "inpainting": "In-painting",
    "inpainting_semantics": "In-painting + semantics",
    "patch_shuffling": "Patch shuffling",
    "patch_shuffling_semantics": "Patch shuffling + semantics",
    "rotation": "Rotation",
    "rubiks_cube": "Rubik's cube",
    "models_genesis": "Models Genesis",
    "self_classification": "Self-classification",
    "semantic_genesis": "Semantic Genesis",
    "imagenet": "ImageNet",
    "genesis_ct_2d": "Genesis CT 2D",
    "genesis_xray_2d": "Genesis X-ray 2D",
}

# Which method adds semantics (self-discovery + self-classification) to which base.
SEMANTIC_PAIRS: tuple[tuple[str, str], ...] = (
    ("inpainting", "inpainting_semantics"),
    ("patch_shuffling", "patch_shuffling_semantics"),
    ("models_genesis", "semantic_genesis"),
)


def method_label(method: str) -> str:
    """Display name of a method key (the key itself for a method without one)."""
    return METHOD_LABELS.get(method, method)


@dataclass(frozen=True)
class Published:
    """One published number: mean and std (None where the source gives none) in percent, where it comes from."""

    mean: float
    std: float | None
    source: str
    approximate: bool = False

    def text(self) -> str:
        """'98.46 ± 0.30', '69.15' (no std) or '≈97.3' (read off a figure)."""
        if self.approximate:
            return f"≈{self.mean:.1f}"
        return f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f} ± {self.std:.2f}"


SOURCE_3D = "Haghighi et al., MICCAI 2020 (3D comparison table)"
SOURCE_SEMANTICS = "Haghighi et al., MICCAI 2020 ('adding semantics' figure, read off the bars, about ±0.3)"
SOURCE_2D = "Zhou et al., Models Genesis (2D baselines, figures/plotsuperbar.m)"


def published(method: str, task: str) -> Published | None:
    """The published number for a method on a task, or None where no paper reports one (never a made-up value)."""
    if method in PUBLISHED_3D and task in PUBLISHED_3D[method]:
        return Published(*PUBLISHED_3D[method][task], source=SOURCE_3D)
    if method in ADDING_SEMANTICS and task in ADDING_SEMANTICS[method]:
        return Published(ADDING_SEMANTICS[method][task], None, source=SOURCE_SEMANTICS, approximate=True)
    if method in PUBLISHED_2D and task in PUBLISHED_2D[method]:
        return Published(*PUBLISHED_2D[method][task], source=SOURCE_2D)
    return None

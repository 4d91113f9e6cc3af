"""Every figure of the workflow is drawn here, from arrays and tables the stages prepare; nothing else imports
matplotlib (the result figures of tables/figures.py use this module's `plt` and `save`).

Three shapes cover the stages' figures: `epoch_curves` (a training history, one panel per quantity), `image_grid`
(rows of images: montages, reconstructions, restorations, galleries) and `latent_scatter`; `matrix_image` draws a
confusion matrix. Each writes one PNG atomically and closes its figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display: jobs run headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .runtime.files import atomic_path  # noqa: E402

# pyplot and the legend artists, for the result figures of tables/build.py (bar charts with custom legends).
__all__ = [
    "Cell",
    "Line2D",
    "MaxNLocator",
    "Panel",
    "Patch",
    "epoch_curves",
    "image_grid",
    "latent_scatter",
    "matrix_image",
    "plt",
    "save",
]


def save(fig: plt.Figure, out_png: Path | str, dpi: int = 100, rect: tuple | None = None) -> Path:
    """Lay out, write atomically and close a figure; returns the path."""
    fig.tight_layout(rect=rect)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return Path(out_png)


@dataclass(frozen=True)
class Panel:
    """One panel of epoch_curves: the history columns it draws (legend label -> column) and its y axis."""

    ylabel: str
    columns: Mapping[str, str]
    log: bool = False


def epoch_curves(
    history: pd.DataFrame,
    panels: Sequence[Panel],
    out_png: Path | str,
    title: str | None = None,
    best_epoch: int = 0,
    markers: bool = False,
) -> Path:
    """A training history per epoch, one panel per quantity; all-NaN columns are left out, a dotted line marks the
    kept epoch when best_epoch is given."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels) + 0.5, 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for label, column in panel.columns.items():
            if column in history and history[column].notna().any():
                draw = ax.semilogy if panel.log else ax.plot
                draw(history.epoch, history[column], marker="." if markers else None, label=label or None)
        ax.set(xlabel="epoch", ylabel=panel.ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
        if any(line.get_label() and not line.get_label().startswith("_") for line in ax.lines):
            ax.legend()
    if title:
        fig.suptitle(title)
    return save(fig, out_png)


@dataclass(frozen=True)
class Cell:
    """One image of an image_grid: grey levels between vmin and vmax (None: the image's own range), an optional
    mask outlined in red, a title above and a note in its corner; origin "lower" draws array row 0 at the bottom."""

    image: np.ndarray
    title: str = ""
    mask: np.ndarray | None = None
    note: str = ""
    origin: str = "upper"
    aspect: float | None = None
    vmin: float | None = 0.0
    vmax: float | None = 1.0


def image_grid(
    rows: Sequence[Sequence[Cell | None]],
    out_png: Path | str,
    title: str | None = None,
    row_labels: Sequence[str] = (),
    column_titles: Sequence[str] = (),
    cell_size: tuple[float, float] = (2.0, 2.0),
    font_size: int = 7,
    dpi: int = 80,
) -> Path:
    """Rows of images without axes (None leaves a cell empty), with optional column titles over the first row and
    row labels left of the first column."""
    columns = max((len(row) for row in rows), default=1) or 1
    label_width = 1.6 if any(row_labels) else 0.0  # room for the labels left of the first column
    size = (cell_size[0] * columns + label_width, cell_size[1] * max(len(rows), 1))
    fig, axes = plt.subplots(max(len(rows), 1), columns, figsize=size, squeeze=False)
    for r, axes_row in enumerate(axes):
        for c, ax in enumerate(axes_row):
            ax.axis("off")
            cell = rows[r][c] if r < len(rows) and c < len(rows[r]) else None
            if cell is None:
                continue
            ax.imshow(cell.image, cmap="gray", vmin=cell.vmin, vmax=cell.vmax, origin=cell.origin, aspect=cell.aspect)
            if cell.mask is not None and cell.mask.any():
                ax.contour(cell.mask, levels=[0.5], colors="red", linewidths=0.8)
            if cell.note:
                ax.text(1, 1, cell.note, color="yellow", fontsize=font_size, va="top")
            heading = column_titles[c] if r == 0 and c < len(column_titles) else ""
            if heading or cell.title:
                ax.set_title(
                    "\n".join(t for t in (heading, cell.title) if t), fontsize=font_size + 1 if heading else font_size
                )
        if r < len(row_labels) and row_labels[r]:
            axes_row[0].text(
                -0.08,
                0.5,
                row_labels[r],
                transform=axes_row[0].transAxes,
                ha="right",
                va="center",
                fontsize=font_size + 1,
            )
    if title:
        fig.suptitle(title, fontsize=font_size + 3)
    return save(fig, out_png, dpi=dpi)


def principal_components(points: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The points' coordinates along their first `count` principal axes, and each axis' share of the variance in %.

    From the eigenvectors of the features' covariance, so memory stays that of the points; axes beyond the data's
    rank are zero."""
    points = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    centred = points - points.mean(axis=0)
    variances, axes = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(variances)[::-1][:count]
    coordinates = np.zeros((len(points), count))
    coordinates[:, : len(order)] = centred @ axes[:, order]
    shares = np.zeros(count)
    total = variances.clip(min=0).sum()
    if total > 0:
        shares[: len(order)] = 100 * variances[order].clip(min=0) / total
    return coordinates, shares


def latent_scatter(latents: np.ndarray, labels: Mapping[str, Sequence], out_png: Path | str) -> Path:
    """First two principal components of the latents, one panel per colouring (categorical legend or colourbar)."""
    xy, explained = principal_components(latents, 2)
    panels = labels or {"": np.zeros(len(latents))}
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (name, values) in zip(axes[0], panels.items()):
        values = pd.Series(values)
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            points = ax.scatter(xy[:, 0], xy[:, 1], c=values, cmap="viridis", s=12)
            fig.colorbar(points, ax=ax, label=name)
        else:
            for category in pd.unique(values.astype(str)):
                chosen = (values.astype(str) == category).to_numpy()
                ax.scatter(xy[chosen, 0], xy[chosen, 1], s=12, label=category)
            ax.legend(title=name, fontsize="small")
        ax.set(xlabel=f"PC1 ({explained[0]:.0f}%)", ylabel=f"PC2 ({explained[1]:.0f}%)", title=name)
    return save(fig, out_png)


def matrix_image(
    matrix: np.ndarray, out_png: Path | str, xlabel: str, ylabel: str, title: str, colour_label: str
) -> Path:
    """A matrix as a colour image with its colour bar (a confusion matrix, say)."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    image = ax.imshow(matrix, cmap="viridis")
    fig.colorbar(image, ax=ax, label=colour_label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return save(fig, out_png, dpi=90)

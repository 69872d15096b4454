"""matplotlib figures for TensorBoard: spectra, profiles along paths, histograms train vs val.

matplotlib is the optional extra ``[viz]``: it is imported inside the functions,
never at module import, and without it every figure function returns ``None`` after one
warning per process. Figures are ``matplotlib.figure.Figure`` objects with an Agg canvas,
made without ``pyplot``: the user's backend is never switched and no figure is registered
with pyplot's figure manager.

Train is drawn black and solid, val grey and dashed (:data:`SPLIT_STYLES`), never in a hue:
TensorBoard gives each run a colour of its own palette (orange, blue, red, cyan, ... in the
order the runs start), which a figure cannot know, so a blue train line would read as the
blue run's. Axes carry at most :data:`MAX_TICKS` ticks with short labels (a common power of
ten goes into the axis label), so that they stay apart at the figure's 360 x 240 pixels.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from torch.utils.tensorboard import SummaryWriter

#: Set once the missing-matplotlib warning has been given (once per process).
_warned_missing_matplotlib = False

#: Line style per split; other names take :data:`OTHER_STYLES` in turn.
SPLIT_STYLES: dict[str, dict[str, str]] = {
    "train": {"color": "black", "linestyle": "-"},
    "val": {"color": "0.5", "linestyle": "--"},
}
OTHER_STYLES: tuple[dict[str, str], ...] = (
    {"color": "0.3", "linestyle": ":"},
    {"color": "0.3", "linestyle": "-."},
)
#: At most this many ticks on an axis (``MaxNLocator(nbins=MAX_TICKS - 1)``).
MAX_TICKS = 6
#: Font sizes in points at :data:`DPI` (a point is 75/72 pixels): title, axis labels, ticks.
FONT_SIZES = {"title": 11, "label": 10, "ticks": 9}
#: 4.8 x 3.2 inches at 75 dpi: 360 x 240 pixels, about the width of a TensorBoard image card.
FIGSIZE, DPI = (4.8, 3.2), 75


def split_style(name: str, index: int) -> dict[str, str]:
    """The line style of split ``name``, the ``index``-th of its figure."""
    return SPLIT_STYLES.get(name, OTHER_STYLES[index % len(OTHER_STYLES)])


def _readable_axes(ax: Axes) -> None:
    """At most :data:`MAX_TICKS` ticks per axis with labels of a few digits: values below 1e-2
    or from 1e4 are labelled in units of a power of ten (:func:`_scale_into_labels`)."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=MAX_TICKS - 1))
        formatter = ScalarFormatter(useOffset=False)
        formatter.set_powerlimits((-3, 4))
        axis.set_major_formatter(formatter)
    ax.tick_params(labelsize=FONT_SIZES["ticks"])


def _scale_into_labels(ax: Axes) -> None:
    """Move the power of ten the tick labels are in (matplotlib's offset text, drawn at the
    axis end where it can collide with a long axis label) into the axis label: ``e [x 1e-5]``
    means a tick label ``2`` is ``2e-5``."""
    for axis in (ax.xaxis, ax.yaxis):
        formatter = axis.get_major_formatter()
        formatter.set_locs(axis.get_majorticklocs())
        if offset := formatter.get_offset():
            axis.set_label_text(f"{axis.get_label_text()} [x {offset}]")
            axis.get_offset_text().set_visible(False)


def _new_axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes] | None:
    """A 360 x 240 pixel ``Figure`` (:data:`FIGSIZE` at :data:`DPI`) on an Agg canvas and its
    axes; ``None`` without matplotlib (warning once per process). No constrained layout: it
    was about half of a figure's cost (0.34-0.52 s for the four figures of a measurement at
    100 dpi)."""
    global _warned_missing_matplotlib
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        if not _warned_missing_matplotlib:
            _warned_missing_matplotlib = True
            warnings.warn(
                "matplotlib is not installed, so lightning_memwatch skips its TensorBoard figures;"
                " `pip install lightning-memwatch[viz]` to get them.",
                stacklevel=3,  # the caller of the public function that called this one
            )
        return None
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    fig.subplots_adjust(left=0.17, right=0.95, bottom=0.17, top=0.89)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=FONT_SIZES["title"])
    ax.set_xlabel(xlabel, fontsize=FONT_SIZES["label"])
    ax.set_ylabel(ylabel, fontsize=FONT_SIZES["label"])
    _readable_axes(ax)
    return fig, ax


def _numpy(value: Tensor) -> np.ndarray:
    return torch.as_tensor(value).detach().to("cpu", torch.float64).numpy()


def spectrum_figure(mean_log_s: Mapping[str, Tensor]) -> Figure | None:
    """The mean log singular spectrum per split: ``i`` on x, mean ``log s_i`` on y.

    Feiszli (2017), sec. 5.2 (spectra of the decoder Jacobian over
    training). One labelled line per split, e.g. ``{"train": ..., "val": ...}``; a
    memorizing decoder separates the two.

    Args:
        mean_log_s: per split, a 1-D tensor of mean ``log s_i``, ``i = 1..r`` (descending s).

    Returns:
        The figure, or ``None`` without matplotlib or when ``mean_log_s`` is empty.
    """
    curves = {}
    for name, values in mean_log_s.items():
        if values.ndim != 1:
            raise ValueError(f"Expected a 1-D spectrum for {name!r} but got shape {values.shape}")
        curves[name] = (torch.arange(1, len(values) + 1), values)
    made = _new_axes("Mean log singular spectrum", "index i", "mean log s_i") if curves else None
    return _plot_curves(*made, curves) if made is not None else None


def profile_figure(
    curves: Mapping[str, tuple[Tensor, Tensor]], *, xlabel: str, ylabel: str, title: str
) -> Figure | None:
    """Curves ``y(x)`` per split, e.g. ``lp`` along dip paths against output arclength.

    Each value is ``(x, y)`` of one shape: 1-D for one curve, or 2-D ``(B, T)`` for ``B``
    curves (one per probe point) drawn in the split's colour and labelled once. Non-finite
    points leave gaps.

    Args:
        curves: per split, ``(x, y)``.
        xlabel: x-axis label, e.g. ``"arclength s"``.
        ylabel: y-axis label, e.g. ``"log density lp"``.
        title: figure title.

    Returns:
        The figure, or ``None`` without matplotlib or when ``curves`` is empty.
    """
    for name, (x, y) in curves.items():
        if x.shape != y.shape or x.ndim not in (1, 2):
            raise ValueError(
                f"Expected x and y of one 1-D or 2-D shape for {name!r} but got"
                f" {tuple(x.shape)} and {tuple(y.shape)}"
            )
    made = _new_axes(title, xlabel, ylabel) if curves else None
    return _plot_curves(*made, curves) if made is not None else None


def _plot_curves(fig: Figure, ax: Axes, curves: Mapping[str, tuple[Tensor, Tensor]]) -> Figure:
    """Draw checked :func:`profile_figure` curves on ``ax``, one style and label per split."""
    for index, (name, (x, y)) in enumerate(curves.items()):
        xs, ys = np.atleast_2d(_numpy(x)), np.atleast_2d(_numpy(y))
        alpha = 1.0 if len(xs) == 1 else max(0.35, 1.0 / math.sqrt(len(xs)))
        style = split_style(name, index)
        for row, (xr, yr) in enumerate(zip(xs, ys, strict=True)):
            label = name if row == 0 else None
            ax.plot(xr, yr, **style, linewidth=1.6, alpha=alpha, label=label)
    ax.legend(fontsize=FONT_SIZES["ticks"])
    _scale_into_labels(ax)
    return fig


def histogram_figure(samples: Mapping[str, Tensor], *, xlabel: str, title: str) -> Figure | None:
    """Overlaid normalized histograms on shared bins, e.g. recovery errors train vs val.

    Webster et al. (2019), fig. 3: the training probe's recovery errors sit
    left of the validation probe's when the generator overfits. Non-finite values are
    dropped; the bins (``clip(sqrt(N), 10, 50)`` of equal width over all finite values) are
    shared so the densities compare.

    Args:
        samples: per split, the values (any shape, flattened).
        xlabel: x-axis label, e.g. ``"recovery error"``.
        title: figure title.

    Returns:
        The figure, or ``None`` without matplotlib or when no value is finite.
    """
    finite = {}
    for name, values in samples.items():
        flat = _numpy(values).ravel()
        if (kept := flat[np.isfinite(flat)]).size > 0:
            finite[name] = kept
    if not finite:
        return None
    pooled = np.concatenate(list(finite.values()))
    low, high = float(pooled.min()), float(pooled.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, int(np.clip(math.sqrt(pooled.size), 10, 50)) + 1)
    made = _new_axes(title, xlabel, "density")
    if made is None:
        return None
    fig, ax = made
    for index, (name, values) in enumerate(finite.items()):
        label = f"{name} (n={values.size})"
        if index == 0:  # the first split filled, the others as outlines in their line style
            color = split_style(name, index)["color"]
            ax.hist(values, bins=edges, density=True, color=color, alpha=0.35, label=label)
        else:
            style = split_style(name, index)
            ax.hist(values, bins=edges, density=True, histtype="step", linewidth=1.8,
                    label=label, **style)  # fmt: skip
    ax.legend(fontsize=FONT_SIZES["ticks"])
    _scale_into_labels(ax)
    return fig


def add_figure(writer: SummaryWriter, tag: str, fig: Figure | None, step: int) -> None:
    """Render ``fig`` (if not ``None``) and add it to TensorBoard as an RGB image at ``step``.

    Does what ``SummaryWriter.add_figure`` does (Agg render, ``add_image`` in CHW, close)
    without importing ``pyplot`` as it would: the figure is drawn on its own Agg canvas, and
    closed in pyplot only if pyplot is already loaded and manages it.
    """
    if fig is None:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    writer.add_image(tag, np.ascontiguousarray(rgb.transpose(2, 0, 1)), step, dataformats="CHW")
    if (pyplot := sys.modules.get("matplotlib.pyplot")) is not None:
        pyplot.close(fig)

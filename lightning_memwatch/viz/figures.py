"""matplotlib figures for TensorBoard: spectra, profiles along paths, histograms train vs val.

matplotlib is the optional extra ``[viz]``: it is imported inside the functions,
never at module import, and without it every figure function returns ``None`` after one
warning per process. Figures are ``matplotlib.figure.Figure`` objects with an Agg canvas,
made without ``pyplot``: the user's backend is never switched and no figure is registered
with pyplot's figure manager.
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


def _new_axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes] | None:
    """A 6 x 4 inch, 60 dpi ``Figure`` on an Agg canvas and its axes; ``None`` without
    matplotlib (warning once per process). No constrained layout: it was about half of a
    figure's cost (0.34-0.52 s for the four figures of a measurement at 100 dpi)."""
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
    fig = Figure(figsize=(6, 4), dpi=60)
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.14, top=0.9)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
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
    """Draw checked :func:`profile_figure` curves on ``ax``, one colour and label per split."""
    for index, (name, (x, y)) in enumerate(curves.items()):
        xs, ys = np.atleast_2d(_numpy(x)), np.atleast_2d(_numpy(y))
        alpha = 1.0 if len(xs) == 1 else max(0.2, 1.0 / math.sqrt(len(xs)))
        for row, (xr, yr) in enumerate(zip(xs, ys, strict=True)):
            ax.plot(xr, yr, color=f"C{index}", alpha=alpha, label=name if row == 0 else None)
    ax.legend()
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
        ax.hist(values, bins=edges, density=True, alpha=0.5, color=f"C{index}", label=label)
    ax.legend()
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

"""Figures: their content, the Agg canvas, and the one warning without matplotlib."""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

import lightning_memwatch.viz
from lightning_memwatch.viz import (
    add_figure,
    figures,
    histogram_figure,
    profile_figure,
    spectrum_figure,
)


def legend_labels(fig) -> list[str]:
    return [text.get_text() for text in fig.axes[0].get_legend().get_texts()]


def test_spectrum_figure_draws_one_labelled_line_per_split() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    train, val = torch.tensor([2.0, 1.0, -3.0]), torch.tensor([1.5, 0.5, -1.0])
    fig = spectrum_figure({"train": train, "val": val})
    assert isinstance(fig.canvas, FigureCanvasAgg)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["train", "val"]
    for line, values in zip(lines, (train, val), strict=True):
        np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])
        np.testing.assert_array_equal(line.get_ydata(), values.numpy())
    assert legend_labels(fig) == ["train", "val"]
    with pytest.raises(ValueError, match="Expected a 1-D spectrum"):
        spectrum_figure({"train": torch.zeros(2, 3)})


def test_profile_figure_draws_each_row_and_labels_each_split_once() -> None:
    s = torch.linspace(0, 1, 5).expand(3, 5)
    fig = profile_figure(
        {"train": (s, -s), "val": (s[0], s[0].square())}, xlabel="s", ylabel="lp", title="dip"
    )
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("s", "lp", "dip")
    assert len(ax.get_lines()) == 4
    assert legend_labels(fig) == ["train", "val"]
    np.testing.assert_allclose(ax.get_lines()[3].get_ydata(), s[0].square().numpy())
    with pytest.raises(ValueError, match="Expected x and y of one 1-D or 2-D shape"):
        profile_figure({"train": (s, s[0])}, xlabel="s", ylabel="lp", title="dip")


def test_histogram_figure_shares_bins_and_normalizes_finite_values() -> None:
    train = torch.cat([torch.linspace(0, 1, 100), torch.tensor([math.nan, math.inf])])
    val = torch.linspace(0.5, 3, 44)
    fig = histogram_figure({"train": train, "val": val}, xlabel="e", title="t")
    # numpy's density histograms on sqrt(144) = 12 equal bins over all finite values
    edges = np.linspace(0, 3, 13)
    expected = {
        name: np.histogram(values, bins=edges, density=True)[0]
        for name, values in (("train", np.linspace(0, 1, 100)), ("val", val.double().numpy()))
    }
    ax = fig.axes[0]
    bars = ax.patches[:12]  # train: filled bars
    np.testing.assert_allclose([b.get_x() for b in bars], edges[:-1])
    np.testing.assert_allclose([b.get_height() for b in bars], expected["train"])
    (outline,) = ax.patches[12:]  # val: one step outline over the same bins
    xy = outline.get_xy()
    tops = xy[1:-1:2, 1][:12]  # the step's (left, top), (right, top) corners, bin by bin
    np.testing.assert_allclose(xy[1:-1:2, 0][:12], edges[:-1])
    np.testing.assert_allclose(tops, expected["val"])
    assert legend_labels(fig) == ["train (n=100)", "val (n=44)"]
    assert histogram_figure({"train": torch.tensor([math.nan])}, xlabel="e", title="t") is None


#: TensorBoard's run colours (its default palette, ``tensorboardColorBlindAssist``).
TENSORBOARD_RUN_COLOURS = ("#ff7043", "#0077bb", "#cc3311", "#33bbee", "#ee3377", "#009988")


def test_train_is_black_and_solid_val_grey_and_dashed_in_no_run_colour() -> None:
    from matplotlib.colors import to_hex, to_rgb

    values = {"train": torch.tensor([3.0, 1.0, 0.0]), "val": torch.tensor([2.0, 1.5, 0.5])}
    lines = spectrum_figure(values).axes[0].get_lines()
    assert [(to_hex(ln.get_color()), ln.get_linestyle()) for ln in lines] == [
        ("#000000", "-"),
        ("#808080", "--"),
    ]
    patches = histogram_figure(values, xlabel="e", title="t").axes[0].patches
    train_fill, val_edge = patches[0].get_facecolor(), patches[-1].get_edgecolor()
    _, dashes = patches[-1].get_linestyle()  # a dash pattern, as matplotlib stores "--"
    assert to_hex(train_fill[:3]) == "#000000" and len(dashes) == 2
    for colour in (train_fill[:3], val_edge[:3], *(ln.get_color() for ln in lines)):
        red, green, blue = to_rgb(colour)
        assert red == green == blue  # a grey: no hue to mistake for a run's
    assert not {to_hex(ln.get_color()) for ln in lines} & set(TENSORBOARD_RUN_COLOURS)


def overlaps(boxes: list, along: int, gap: float = 1.0) -> list[tuple[int, int]]:
    """Neighbouring boxes (after sorting along x, ``along=0``, or y, ``along=1``) that are less
    than ``gap`` pixels apart."""
    spans = sorted((box.get_points()[:, along] for box in boxes), key=lambda span: span[0])
    return [(i, i + 1) for i in range(len(spans) - 1) if spans[i][1] + gap > spans[i + 1][0]]


def tick_label_boxes(fig, axis) -> list:
    """The window extents of the tick labels the renderer draws on ``axis`` (inside the view)."""
    renderer = fig.canvas.get_renderer()
    low, high = sorted(axis.get_view_interval())
    return [
        tick.label1.get_window_extent(renderer)
        for tick in axis.get_major_ticks()
        if tick.label1.get_visible() and tick.label1.get_text() and low <= tick.get_loc() <= high
    ]


def test_the_overlap_measure_finds_crowded_tick_labels() -> None:
    """The check below can fail: matplotlib's default ticks on 0.002..0.034 at the old
    6 x 4 in, 60 dpi figure, crowded onto 25 ticks, overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MultipleLocator

    fig = Figure(figsize=(6, 4), dpi=60)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0.002, 0.034], [0, 1])
    ax.xaxis.set_major_locator(MultipleLocator(0.00125))
    fig.canvas.draw()
    assert overlaps(tick_label_boxes(fig, ax.xaxis), along=0)


@pytest.mark.parametrize("scale", [1e-7, 1e-3, 0.02, 1.0, 37.0, 2e4, 3e6])
@pytest.mark.parametrize("shift", [0.0, -1.0])
def test_tick_labels_stay_apart_and_inside_the_figure(scale: float, shift: float) -> None:
    """Measured on the rendered figure: no two tick labels of an axis closer than a pixel, the
    x tick labels clear of the x label, every label inside the 360 x 240 pixels."""
    generator = torch.Generator().manual_seed(0)
    train = (torch.rand(64, generator=generator, dtype=torch.float64) + shift) * scale
    val = (torch.rand(64, generator=generator, dtype=torch.float64) * 1.5 + shift) * scale
    arclength = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64) * scale
    made = [
        histogram_figure({"train": train, "val": val}, xlabel="recovery error e", title="t"),
        spectrum_figure({"train": train[:16].sort(descending=True).values, "val": val[:16]}),
        profile_figure(
            {"train": (arclength, train[:9]), "val": (arclength, val[:9])},
            xlabel="output arclength s",
            ylabel="lp = log p(z) - psi_k",
            title="dip path",
        ),
    ]
    for fig in made:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        x_boxes, y_boxes = tick_label_boxes(fig, ax.xaxis), tick_label_boxes(fig, ax.yaxis)
        assert len(x_boxes) >= 2 and len(y_boxes) >= 2
        assert overlaps(x_boxes, along=0) == [], [t.get_text() for t in ax.get_xticklabels()]
        assert overlaps(y_boxes, along=1) == [], [t.get_text() for t in ax.get_yticklabels()]
        xlabel = ax.xaxis.label.get_window_extent(renderer)
        assert all(box.y0 >= xlabel.y1 for box in x_boxes)
        labels = [ax.xaxis.label, ax.yaxis.label, ax.title]
        for box in [text.get_window_extent(renderer) for text in labels] + x_boxes + y_boxes:
            assert 0 <= box.x0 and box.x1 <= 360 and 0 <= box.y0 and box.y1 <= 240, box
        for axis in (ax.xaxis, ax.yaxis):  # a power of ten is in the axis label, not at its end
            offset = axis.get_offset_text()
            assert not (offset.get_visible() and offset.get_text())


def test_add_figure_skips_none() -> None:
    writer = mock.Mock()
    add_figure(writer, "tag", None, 3)
    writer.add_image.assert_not_called()


def test_without_matplotlib_figures_are_none_after_one_warning(
    monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(figures, "_warned_missing_matplotlib", False)
    values = {"train": torch.zeros(3), "val": torch.ones(3)}
    assert spectrum_figure(values) is None
    assert spectrum_figure(values) is None
    assert histogram_figure(values, xlabel="e", title="t") is None
    assert profile_figure({"train": (values["train"],) * 2}, xlabel="", ylabel="", title="") is None
    (warning,) = recwarn.list
    assert "pip install lightning-memwatch[viz]" in str(warning.message)
    assert warning.filename == __file__


def module_level_imports(path: Path) -> list[str]:
    """Modules a file imports when it is imported (``if TYPE_CHECKING:`` blocks excluded)."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
        elif isinstance(node, ast.If) and not ast.unparse(node.test).endswith("TYPE_CHECKING"):
            names += [n.module or "" for n in ast.walk(node) if isinstance(n, ast.ImportFrom)]
    return names


def test_viz_imports_neither_matplotlib_nor_callbacks_nor_metrics_at_import() -> None:
    files = sorted(Path(lightning_memwatch.viz.__file__).parent.glob("*.py"))
    assert len(files) == 8  # __init__, figures, geometry, images, layout, recovery, splits, writer
    for path in files:
        for name in module_level_imports(path):
            assert not name.startswith(("matplotlib", "lightning_memwatch.callbacks")), path
            assert not name.startswith("lightning_memwatch.metrics"), path

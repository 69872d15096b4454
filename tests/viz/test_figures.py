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
    fig = histogram_figure(
        {"train": train, "val": torch.linspace(0.5, 3, 44)}, xlabel="e", title="t"
    )
    bars = fig.axes[0].patches
    assert len(bars) == 2 * 12  # sqrt(144) bins per split, shared
    train_bars, val_bars = bars[:12], bars[12:]
    assert [b.get_x() for b in train_bars] == [b.get_x() for b in val_bars]
    for split in (train_bars, val_bars):
        assert sum(b.get_height() * b.get_width() for b in split) == pytest.approx(1.0)
    assert legend_labels(fig) == ["train (n=100)", "val (n=44)"]
    assert histogram_figure({"train": torch.tensor([math.nan])}, xlabel="e", title="t") is None


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
    assert len(files) == 7  # __init__, figures, geometry, images, layout, recovery, writer
    for path in files:
        for name in module_level_imports(path):
            assert not name.startswith(("matplotlib", "lightning_memwatch.callbacks")), path
            assert not name.startswith("lightning_memwatch.metrics"), path

"""One TensorBoard custom-scalars layout that puts each train/val pair on one chart.

The public keys are logged one by one (``pl_module.log`` -> ``add_scalar``) into the logger's
run; their ``/train`` and ``/val`` values are also written into the runs ``train`` and ``val``
as the tag ``<stem>`` (:mod:`~lightning_memwatch.viz.splits`), and a single
``add_custom_scalars`` layout groups the keys. A train-vs-val chart shows the tag ``<stem>``:
TensorBoard colours a series by its run, so train and val are two colours, named by their
runs (``version_0/train``, ``version_0/val``); the two keys of the logger's own run would be
one colour with two markers.

TensorBoard's custom-scalars plugin reads each chart's tags as Python regular expressions
applied with ``re.match`` (``custom_scalars_plugin.scalars_impl``), which anchors only the
start; tags are therefore written as ``^re.escape(key)$`` so that a key matches itself only
(``.../mre`` not ``.../mre_gap``, ``.`` or ``(`` literally).

The layout is in reading order, the same whichever callback wrote its keys first: the families
in :data:`CATEGORY_ORDER`; in each, the signal first (the train-vs-val chart of its leading
descriptor, that descriptor's gap, its KS p-value), then its other descriptors the same way, then
the parts of descriptors (``dip/volume``, ...), settings (:data:`SETTING`: ``radius_0``, ...),
and the cost keys (:data:`COST_KEYS`) last.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

#: Keys already laid out per writer, so that layouts added by several callbacks accumulate.
_keys_by_writer: weakref.WeakKeyDictionary[object, list[str]] = weakref.WeakKeyDictionary()

#: Categories in this order; other ``memwatch/`` ones after them, then the rest (alphabetically).
CATEGORY_ORDER = tuple(
    f"memwatch/{family}"
    for family in (
        "recovery",
        "spectrum",
        "density",
        "likelihood",
        "samples",
        "complexity",
        "early_stopping",
    )
)
#: Descriptors of a family in reading order (the one that decides first); others after them,
#: alphabetically.
DESCRIPTOR_ORDER = {
    "memwatch/recovery": ("mre",),
    "memwatch/spectrum": ("log_volume", "local_rank", "intrinsic_dim", "log_condition"),
    "memwatch/density": ("dip", "decay"),
    "memwatch/samples": ("ct", "copy_fraction", "heldout_copy_fraction"),
    "memwatch/early_stopping": ("triggered",),
}
#: What a measurement cost and how much it covered, last in each family, in this order.
COST_KEYS = ("seconds", "probe_size", "staleness", "nonfinite")
#: Settings a family logs beside its values (the density's decay radii ``radius_0``, ...):
#: after its descriptors, before its cost keys.
SETTING = re.compile(r"radius_\d+$")
#: A descriptor's charts in this order: train vs val (or a lone split), gap, KS p, the others.
_PART_RANK = {"train": 0, "val": 0, "gap": 1, "ks_pvalue": 2}


def _literal(key: str) -> str:
    """A regular expression that ``re.match`` es exactly ``key``."""
    return f"^{re.escape(key)}$"


def _category(key: str) -> str:
    """The family a key belongs to: its first two ``/`` components (``memwatch/spectrum``)."""
    parts = key.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


def _relative(key: str, category: str) -> str:
    """``key`` without its ``category/`` prefix (the last component if nothing is left)."""
    rest = key[len(category) + 1 :] if key.startswith(f"{category}/") else ""
    return rest or key.rsplit("/", 1)[-1]


def _category_rank(category: str) -> tuple[int, bool, str]:
    """Known families in order, then other ``memwatch/`` ones, then the rest (alphabetically)."""
    if category in CATEGORY_ORDER:
        return CATEGORY_ORDER.index(category), False, ""
    return len(CATEGORY_ORDER), not category.startswith("memwatch/"), category


def _chart_rank(category: str, path: str) -> tuple:
    """Where the chart of ``path`` (a key below ``category``, or the stem of a train/val pair,
    ``""`` for the family's own pair) goes in its category."""
    if path in COST_KEYS:
        return (2, COST_KEYS.index(path))
    if SETTING.match(path):
        return (1, path)
    head, _, last = path.rpartition("/")
    if last in _PART_RANK:
        descriptor, part = head, _PART_RANK[last]
    elif not head and last.endswith("_gap"):  # recovery's mre_gap: the gap of mre
        descriptor, part = last.removesuffix("_gap"), 1
    elif head:  # a descriptor's own extra key (spectrum's log_volume/prior)
        descriptor, part = head, 3
    else:
        descriptor, part = last, 0
    order = DESCRIPTOR_ORDER.get(category, ())
    top, _, rest = descriptor.partition("/")
    index = order.index(top) if top in order else len(order) if top else 0
    unknown = "" if top in order or not top else top
    return (0, 1 if rest else 0, index, unknown, rest, part)


def custom_scalars_layout(keys: Iterable[str]) -> dict[str, dict[str, list]]:
    """The layout for ``SummaryWriter.add_custom_scalars``, one category per family.

    Keys ``<stem>/train`` and ``<stem>/val`` that are both present share one ``"Multiline"``
    chart ``"<descriptor>: train vs val"`` of the tag ``<stem>`` of the split runs
    (:mod:`~lightning_memwatch.viz.splits`); every other key (``gap``, ``ks_pvalue``,
    ``mre_gap``, ``seconds``, ``probe_size``, ``nonfinite``, a lone ``train``) has a chart of
    its own titled by the key below its family. Categories are ``"memwatch/<family>"``
    (a key's first two components), in reading order (module docstring).

    Example::

        >>> layout = custom_scalars_layout(
        ...     ["memwatch/recovery/seconds", "memwatch/recovery/ks_pvalue",
        ...      "memwatch/recovery/mre/val", "memwatch/recovery/mre/train",
        ...      "memwatch/recovery/mre_gap"])
        >>> list(layout["memwatch/recovery"])
        ['mre: train vs val', 'mre_gap', 'ks_pvalue', 'seconds']
        >>> layout["memwatch/recovery"]["mre: train vs val"]
        ['Multiline', ['^memwatch/recovery/mre$']]
    """
    keys = list(dict.fromkeys(keys))
    present = set(keys)
    charts: dict[str, list[tuple[tuple, str, list]]] = {}
    for key in keys:
        category = _category(key)
        stem, _, split = key.rpartition("/")
        path = key[len(category) + 1 :] if key.startswith(f"{category}/") else ""
        if split in ("train", "val") and {f"{stem}/train", f"{stem}/val"} <= present:
            if split == "train":
                tags = [_literal(stem)]  # the split runs' tag: one colour per split
                title = f"{_relative(stem, category)}: train vs val"
                stem_path = path.rpartition("/")[0]
                rank = _chart_rank(category, f"{stem_path}/train" if stem_path else "train")
                charts.setdefault(category, []).append((rank, title, ["Multiline", tags]))
        else:
            chart = (_chart_rank(category, path), _relative(key, category), ["Multiline"])
            chart[2].append([_literal(key)])
            charts.setdefault(category, []).append(chart)
    return {
        category: {title: chart for _, title, chart in sorted(charts[category], key=_by_rank)}
        for category in sorted(charts, key=_category_rank)
    }


def _by_rank(chart: tuple[tuple, str, list]) -> tuple:
    return chart[0], chart[1]


def add_layout(writer: SummaryWriter, keys: Iterable[str]) -> None:
    """Write the :func:`custom_scalars_layout` of ``keys`` (one ``add_custom_scalars`` call).

    TensorBoard shows only the last layout written to a run, so the keys of earlier calls on
    the same writer (another callback's) are kept and laid out again with the new ones.
    """
    laid_out = _keys_by_writer.setdefault(writer, [])
    for key in keys:
        if key not in laid_out:
            laid_out.append(key)
    writer.add_custom_scalars(custom_scalars_layout(laid_out))

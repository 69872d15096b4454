"""One TensorBoard custom-scalars layout that puts each train/val pair on one chart.

``SummaryWriter.add_scalars`` would make a separate run per key; instead the scalars are
logged one by one (``pl_module.log`` -> ``add_scalar``) and a single ``add_custom_scalars``
layout groups them (DESIGN §5). TensorBoard's custom-scalars plugin reads each chart's tags as
Python regular expressions applied with ``re.match`` (``custom_scalars_plugin.scalars_impl``),
which anchors only the start; tags are therefore written as ``^re.escape(key)$`` so that a key
matches itself only (``.../train`` not ``.../train_ema``, ``.`` or ``(`` literally).
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


def custom_scalars_layout(keys: Iterable[str]) -> dict[str, dict[str, list]]:
    """The layout for ``SummaryWriter.add_custom_scalars``, one category per family.

    Keys ``<stem>/train`` and ``<stem>/val`` that are both present share one ``"Multiline"``
    chart ``"<descriptor>: train vs val"``; every other key (``gap``, ``ks_pvalue``,
    ``mre_gap``, ``seconds``, ``probe_size``, ``nonfinite``, a lone ``train``) has a chart of
    its own titled by the key below its family. Categories are ``"memwatch/<family>"``
    (a key's first two components) and keep the order of first appearance.

    Example::

        >>> layout = custom_scalars_layout(
        ...     ["memwatch/recovery/mre/train", "memwatch/recovery/mre/val",
        ...      "memwatch/recovery/ks_pvalue"])
        >>> layout["memwatch/recovery"]["mre: train vs val"]
        ['Multiline', ['^memwatch/recovery/mre/train$', '^memwatch/recovery/mre/val$']]
        >>> layout["memwatch/recovery"]["ks_pvalue"]
        ['Multiline', ['^memwatch/recovery/ks_pvalue$']]
    """
    keys = list(dict.fromkeys(keys))
    present = set(keys)
    layout: dict[str, dict[str, list]] = {}
    for key in keys:
        category = _category(key)
        charts = layout.setdefault(category, {})
        stem, _, split = key.rpartition("/")
        if split in ("train", "val") and {f"{stem}/train", f"{stem}/val"} <= present:
            if split == "train":
                tags = [_literal(f"{stem}/train"), _literal(f"{stem}/val")]
                charts[f"{_relative(stem, category)}: train vs val"] = ["Multiline", tags]
        else:
            charts[_relative(key, category)] = ["Multiline", [_literal(key)]]
    return layout


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

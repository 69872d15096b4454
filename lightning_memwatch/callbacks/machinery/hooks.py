"""Keep Lightning from calling the hooks a memwatch callback does not implement.

Lightning calls every hook of every callback (``_call_callback_hooks`` in
``lightning/pytorch/trainer/call.py``), each through the profiler and with the callback's
``state_key`` built for the profiler's action name: about 4 us a call on 2 quiet cores, so
four callbacks cost 2-3 ms at each epoch of the demo VAE (22 batches, 6 hooks each), 5-6 % of
its training time, although they do nothing there. Lightning calls a hook only if it is
callable, so :class:`SkipsUnusedHooks` sets each ``on_*`` hook that a memwatch callback class
does not implement to ``None`` on the class (a subclass that implements one gets it called as
usual). ``on_save_checkpoint`` and ``on_load_checkpoint``, which Lightning calls directly, stay.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

#: Hooks Lightning calls directly, not through the callable check: never set to ``None``.
CALLED_DIRECTLY = ("on_save_checkpoint", "on_load_checkpoint")
#: Every hook of Lightning's ``Callback`` that Lightning calls only if it is callable.
SKIPPABLE = tuple(
    name for name in vars(Callback) if name.startswith("on_") and name not in CALLED_DIRECTLY
)


def unused_hooks(cls: type) -> list[str]:
    """The skippable hooks that ``cls`` inherits unchanged from ``Callback``.

    Example::

        >>> class OnlyFitEnd(Callback):
        ...     def on_fit_end(self, trainer, pl_module): ...
        >>> unused = unused_hooks(OnlyFitEnd)
        >>> "on_fit_end" in unused, "on_train_batch_end" in unused
        (False, True)
    """
    return [name for name in SKIPPABLE if getattr(cls, name, None) is getattr(Callback, name)]


class SkipsUnusedHooks:
    """Mixin of the memwatch callbacks: the hooks a class does not implement are ``None``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in unused_hooks(cls):
            setattr(cls, name, None)

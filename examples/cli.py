"""The demo's VAE, digits and memwatch callbacks from a YAML file, with Lightning's LightningCLI.

    python examples/cli.py fit --config examples/config.yaml
    python examples/cli.py fit --config examples/config.yaml --data.n_train=1400 --data.passes=1

The model is :class:`digits_vae.DigitsVAE`, the data :class:`digits_vae.DigitsDataModule`; the
callbacks (``GeometryMonitor``, ``RecoveryMonitor``, ``MemorizationEarlyStopping``) are listed
under ``trainer.callbacks`` in ``examples/config.yaml`` with ``class_path`` and ``init_args``:
their constructor arguments are plain values for exactly this reason (DESIGN §3). Needs
``jsonargparse[signatures]`` (Lightning's requirement for LightningCLI).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_vae import DigitsDataModule, DigitsVAE


def main(args: list[str] | None = None) -> LightningCLI:
    """Run the CLI on ``args`` (``None``: ``sys.argv[1:]``); returns it (``cli.trainer``,
    ``cli.model``)."""
    return LightningCLI(
        DigitsVAE, DigitsDataModule, args=args, save_config_kwargs={"overwrite": True}
    )


if __name__ == "__main__":
    main()

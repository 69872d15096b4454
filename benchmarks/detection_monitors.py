"""The monitor set of the autoencoder classes of ``benchmarks/detection.py`` (mlp, conv, glo)."""

from __future__ import annotations

from typing import Any

from detection_classes import Options, Plan

from lightning_memwatch import GeometryMonitor, LikelihoodMonitor, RecoveryMonitor, SampleMonitor


def autoencoder_monitors(encoder: str | None, plan: Plan, options: Options) -> list[Any]:
    """The monitors at their defaults except ``probe_size`` (32: a memorizing run has 32
    training digits), ``every_n_epochs`` (about 10 checks a run), ``max_overhead`` and, in
    ``fast``, fewer L-BFGS steps. Without ``encoder`` (GLO): geometry and recovery only, the
    module's batches being ``(index, image)`` pairs; with one, the likelihood and the samples'
    data-copying test too."""
    fast = options.fast
    common: dict[str, Any] = {
        "probe_size": 16 if fast else options.probe,
        "every_n_epochs": plan.every,
        "max_overhead": options.budget,
        "seed": options.seed,
    }
    if encoder is None:
        common["input_key"] = 1
    recovery = {"steps": 5, "restarts": 1} if fast else {}
    geometry = {} if options.radii is None else {"radii": options.radii}
    out: list[Any] = [GeometryMonitor(encoder=encoder, **common, **geometry)]
    if options.geometry_only:
        return out
    out.append(RecoveryMonitor(encoder=encoder, **common, **recovery))
    if encoder is not None:  # the importance-sampled likelihood needs q(z|x)
        out.append(
            LikelihoodMonitor(encoder=encoder, **common, **({"num_samples": 8} if fast else {}))
        )
        out.append(SampleMonitor(**common, **({"num_generated": 128} if fast else {})))
    return out

"""The machinery the public monitors share: probes, samplers, output adapters, setup checks,
the measuring context and schedule, rolling statistics, the cost budget, the latents store,
progress and the stopper's decisions. Private: nothing here is part of the public surface."""

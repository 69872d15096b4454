"""Pure-torch measurements of a generator's geometry (no Lightning, no torchmetrics).

Usable on a saved generator in a notebook: every function takes a decoder callable
``f: (B, m) -> (B, ...)`` and latent points, and returns per-point values (DESIGN §5b).
"""

from lightning_memwatch.functional.complexity import local_complexity
from lightning_memwatch.functional.decoder_likelihood import (
    bernoulli_log_likelihood,
    gaussian_log_likelihood,
)
from lightning_memwatch.functional.density import decay_scores, dip_scores, induced_log_density
from lightning_memwatch.functional.jacobian import jacobian
from lightning_memwatch.functional.likelihood import (
    importance_log_likelihood,
    posterior_from_encoder,
)
from lightning_memwatch.functional.recovery import recover_latents
from lightning_memwatch.functional.spectrum import (
    intrinsic_dim,
    local_rank,
    local_scaling,
    log_condition,
    singular_values,
)
from lightning_memwatch.functional.stats import ks_pvalue, mre_gap
from lightning_memwatch.functional.topk import top_singular_values, top_singular_values_and_vector

__all__ = [
    "bernoulli_log_likelihood",
    "decay_scores",
    "dip_scores",
    "gaussian_log_likelihood",
    "importance_log_likelihood",
    "induced_log_density",
    "intrinsic_dim",
    "jacobian",
    "ks_pvalue",
    "local_complexity",
    "local_rank",
    "local_scaling",
    "log_condition",
    "mre_gap",
    "posterior_from_encoder",
    "recover_latents",
    "singular_values",
    "top_singular_values",
    "top_singular_values_and_vector",
]

"""Pure-torch measurements of a generator's geometry (no Lightning, no torchmetrics).

Usable on a saved generator in a notebook: every function takes a decoder callable
``f: (B, m) -> (B, ...)`` and latent points, and returns per-point values.
"""

from lightning_memwatch.functional.autodiff import AutodiffFallbackWarning
from lightning_memwatch.functional.complexity import local_complexity
from lightning_memwatch.functional.copies import (
    near_copies,
    near_copy_share,
    two_nearest_distances,
)
from lightning_memwatch.functional.data_copying import (
    copied,
    copy_fraction,
    data_copying_cells,
    data_copying_from_distances,
    data_copying_statistic,
)
from lightning_memwatch.functional.ddim import ddim_sample, ddim_timesteps
from lightning_memwatch.functional.decay import decay_scores, decay_terms, nearest_neighbour_radii
from lightning_memwatch.functional.decoder_likelihood import (
    bernoulli_log_likelihood,
    gaussian_log_likelihood,
)
from lightning_memwatch.functional.denoiser_spectrum import (
    random_orthonormal,
    x0_estimator,
    x0_singular_values,
)
from lightning_memwatch.functional.density import dip_scores, dip_terms, induced_log_density
from lightning_memwatch.functional.diffusion import (
    convert_prediction,
    denoising_losses,
    epsilon_from_prediction,
    prediction_target,
    q_sample,
    x0_from_prediction,
)
from lightning_memwatch.functional.jacobian import jacobian
from lightning_memwatch.functional.kernels import forward_mode_kernels
from lightning_memwatch.functional.kmeans import assign_cells, kmeans, pairwise_distances
from lightning_memwatch.functional.likelihood import (
    importance_log_likelihood,
    posterior_from_encoder,
)
from lightning_memwatch.functional.neighbours import nearest_neighbours, pca_projection, project
from lightning_memwatch.functional.priors import log_prior, project_to_typical_set, sample_prior
from lightning_memwatch.functional.recovery import recover_latents
from lightning_memwatch.functional.spectrum import (
    intrinsic_dim,
    local_rank,
    local_scaling,
    log_condition,
    singular_values,
)
from lightning_memwatch.functional.stats import ks_pvalue, mann_whitney_z, mre_gap
from lightning_memwatch.functional.topk import top_singular_values, top_singular_values_and_vector

__all__ = [
    "AutodiffFallbackWarning",
    "assign_cells",
    "bernoulli_log_likelihood",
    "convert_prediction",
    "copied",
    "copy_fraction",
    "data_copying_cells",
    "data_copying_from_distances",
    "data_copying_statistic",
    "ddim_sample",
    "ddim_timesteps",
    "decay_scores",
    "decay_terms",
    "denoising_losses",
    "dip_scores",
    "dip_terms",
    "epsilon_from_prediction",
    "forward_mode_kernels",
    "gaussian_log_likelihood",
    "importance_log_likelihood",
    "induced_log_density",
    "intrinsic_dim",
    "jacobian",
    "kmeans",
    "ks_pvalue",
    "local_complexity",
    "local_rank",
    "local_scaling",
    "log_condition",
    "log_prior",
    "mann_whitney_z",
    "mre_gap",
    "near_copies",
    "near_copy_share",
    "nearest_neighbour_radii",
    "nearest_neighbours",
    "pairwise_distances",
    "pca_projection",
    "posterior_from_encoder",
    "prediction_target",
    "project",
    "project_to_typical_set",
    "q_sample",
    "random_orthonormal",
    "recover_latents",
    "sample_prior",
    "singular_values",
    "top_singular_values",
    "top_singular_values_and_vector",
    "two_nearest_distances",
    "x0_estimator",
    "x0_from_prediction",
    "x0_singular_values",
]

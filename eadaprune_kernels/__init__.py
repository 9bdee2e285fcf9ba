"""eadaprune_kernels: spectrum-adaptive visual-token pruning (E-AdaPrune) for vision-language models.

>>> from eadaprune_kernels import adaptive_prune
>>> result = adaptive_prune(tokens)          # tokens [B, N, D]
>>> result.tokens, result.lengths            # kept tokens padded to max_tokens, per-image budgets
"""

from .allocation import allocate_budgets
from .api import adaptive_prune, randomized_svdvals, spectral_budget
from .backends import available_backends
from .ground_truth import exact_budget, exact_svdvals
from .policy import calibrate_energy
from .results import BudgetResult, PackedTokens, PruneResult
from .sketch import gaussian_sketch

__version__ = "0.1.0"

__all__ = [
    "adaptive_prune",
    "spectral_budget",
    "randomized_svdvals",
    "PruneResult",
    "BudgetResult",
    "PackedTokens",
    "gaussian_sketch",
    "exact_budget",
    "exact_svdvals",
    "available_backends",
    "allocate_budgets",
    "calibrate_energy",
    "__version__",
]

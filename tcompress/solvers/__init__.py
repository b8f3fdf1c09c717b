"""Layer 4: the maths GPTQ and SparseGPT share (Hessians, the inverse-Hessian factor, the OBS
column sweep)."""

from tcompress.solvers.hessian import HessianStats, add_gram, inverse_hessian_factor, symmetric_from_upper
from tcompress.solvers.obs import runs, sweep

__all__ = ["HessianStats", "add_gram", "inverse_hessian_factor", "symmetric_from_upper", "runs", "sweep"]

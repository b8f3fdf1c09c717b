"""CPU kernels for packed modules, compiled on first use with the machine's C compiler.

Ops take tensors and ints, never a module. `qgemm` computes a packed linear's product straight
from its codes (4 or 8 bits, fp32 activations) without materialising the float weight; the
dequantize-then-matmul path stays the reference and the fallback. The library is built once per source and CPU into the tcompress
cache (`$TCOMPRESS_CACHE` or ~/.cache/tcompress); with no compiler, or with
`TCOMPRESS_KERNELS=0`, everything runs on the reference path.
"""

from tcompress.kernels.build import available, library
from tcompress.kernels.ops import (
                                   MultiGemv,
                                   attention_step,
                                   decoded_weight,
                                   fits,
                                   input_fits,
                                   int8_gemm,
                                   obs_sweep,
                                   qgemm,
                                   qlinear,
                                   rms_norm,
                                   rope_,
                                   silu_mul,
)

__all__ = ["MultiGemv", "attention_step", "available", "decoded_weight", "fits", "input_fits", "int8_gemm", "library",
           "obs_sweep", "qgemm", "qlinear", "rms_norm", "rope_", "silu_mul"]

"""CPU kernels for packed modules, compiled on first use with the machine's C compiler.

`qgemm` computes a QuantLinear's product straight from its packed codes (4 or 8 bits, fp32
activations) without materialising the float weight; the dequantize-then-matmul path stays the
reference and the fallback. The library is built once per source and CPU into the tcompress
cache (`$TCOMPRESS_CACHE` or ~/.cache/tcompress); with no compiler, or with
`TCOMPRESS_KERNELS=0`, everything runs on the reference path.
"""

from tcompress.kernels.build import available, library
from tcompress.kernels.ops import (SharedInputLinears, attention_step, decoded_weight, int8_gemm, linear, qgemm,
                                   rms_norm, rope_, silu_mul, supports)

__all__ = ["SharedInputLinears", "attention_step", "available", "decoded_weight", "int8_gemm", "library", "linear",
           "qgemm", "rms_norm", "rope_", "silu_mul", "supports"]

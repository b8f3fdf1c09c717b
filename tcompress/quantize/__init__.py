"""Quantization: one file a method (post-training, and `qat.py` for training through the
rounding); `formats.py` holds the packed storage."""

from tcompress.quantize.awq import AWQ
from tcompress.quantize.embedding import EmbeddingQuant, QuantEmbedding
from tcompress.quantize.formats import QuantLinear, pack, unpack
from tcompress.quantize.gptq import GPTQ
from tcompress.quantize.grid import Grid
from tcompress.quantize.hqq import HQQ
from tcompress.quantize.int8 import Int8Linear
from tcompress.quantize.qat import QAT, FakeQuantLinear, convert_qat, prepare_qat
from tcompress.quantize.outliers import Outliers, outlier_report
from tcompress.quantize.rtn import RTN
from tcompress.quantize.smoothquant import SmoothQuant
from tcompress.quantize.vit import ViTQuant
from tcompress.quantize.activations import ActQuantizer

__all__ = ["AWQ", "EmbeddingQuant", "QuantEmbedding", "QuantLinear", "pack", "unpack", "Grid", "GPTQ", "HQQ", "RTN", "Int8Linear", "Outliers", "outlier_report",
           "SmoothQuant", "QAT", "FakeQuantLinear", "convert_qat", "prepare_qat", "ViTQuant", "ActQuantizer"]

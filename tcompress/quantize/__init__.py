"""Layer 5: quantization, one file a method (post-training, and `qat.py` for training through
the rounding); the packed storage they produce is in `tcompress.packed`."""

from tcompress.quantize.awq import AWQ
from tcompress.quantize.base import GridFields, WeightQuantizer
from tcompress.quantize.embedding import EmbeddingQuant
from tcompress.quantize.gptq import GPTQ
from tcompress.quantize.hqq import HQQ
from tcompress.quantize.outliers import Outliers, outlier_report
from tcompress.quantize.qat import QAT, FakeQuantLinear, convert_qat, prepare_qat
from tcompress.quantize.rtn import RTN
from tcompress.quantize.smoothquant import SmoothQuant
from tcompress.quantize.vit import ViTQuant

__all__ = ["AWQ", "GridFields", "WeightQuantizer", "EmbeddingQuant", "GPTQ", "HQQ", "Outliers", "outlier_report",
           "QAT", "FakeQuantLinear", "convert_qat", "prepare_qat", "RTN", "SmoothQuant", "ViTQuant"]

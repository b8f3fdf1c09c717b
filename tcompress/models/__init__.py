"""Loading models (named offline models, HF folders, hub ids, GGUF) and family adapters."""

from tcompress.models.adapters import Adapter, Block, Family, adapter, is_linear, linear_weight
from tcompress.models.loading import ModelSpecError, UnsupportedArchitectureError, load
from tcompress.models.named import NAMED, MissingPackageError

__all__ = [
    "Adapter", "Block", "Family", "adapter", "is_linear", "linear_weight", "load",
    "ModelSpecError", "UnsupportedArchitectureError", "MissingPackageError", "NAMED",
]

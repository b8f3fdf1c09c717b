"""Layer 0: module surgery, memory reuse and measurement, the cache folder, sizes."""

from tcompress.core.cache import cache_root
from tcompress.core.memory import PeakMemory, reuse_freed_memory
from tcompress.core.modules import conv1d_type, is_linear, linear_weight, replace_module
from tcompress.core.sizes import folder_bytes, parameter_count, parameters_by_kind, tensor_bytes

__all__ = ["cache_root", "PeakMemory", "reuse_freed_memory", "conv1d_type", "is_linear", "linear_weight",
           "replace_module", "folder_bytes", "parameter_count", "parameters_by_kind", "tensor_bytes"]

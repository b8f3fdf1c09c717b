"""Layer 2: the packed formats (bit packing, grids, and the modules that hold and run
compressed weights), each registered by `@register_format`."""

from tcompress.packed.activations import ActQuantizer
from tcompress.packed.bits import pack, packed_bytes_per_row, unpack
from tcompress.packed.embedding import QuantEmbedding
from tcompress.packed.grid import Grid
from tcompress.packed.int8 import Int8Linear
from tcompress.packed.quant_linear import QuantLinear
from tcompress.packed.registry import FORMATS, format_class, is_packed, packed_layouts, packed_modules, register_format
from tcompress.packed.sparse import SparseLinear

__all__ = ["ActQuantizer", "pack", "packed_bytes_per_row", "unpack", "QuantEmbedding", "Grid", "Int8Linear",
           "QuantLinear", "FORMATS", "format_class", "is_packed", "packed_layouts", "packed_modules",
           "register_format", "SparseLinear"]

"""Pruning: one file a method; `sparse.py` holds the sparse storage, `masks.py` the masks."""

from tcompress.prune.magnitude import Magnitude
from tcompress.prune.masks import keep_mask, nm_keep_mask, parse_pattern
from tcompress.prune.sparse import SparseLinear
from tcompress.prune.sparsegpt import SparseGPT
from tcompress.prune.structured import Structured
from tcompress.prune.wanda import Wanda

__all__ = ["Magnitude", "SparseGPT", "SparseLinear", "Structured", "Wanda", "keep_mask", "nm_keep_mask", "parse_pattern"]

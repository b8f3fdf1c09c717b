"""Layer 5: pruning, one file a method (`masks.py` the masks, `shrink.py` the structured
surgery, `tokens.py` token merging for ViTs); the sparse storage is `tcompress.packed`."""

from tcompress.prune.base import Pruner
from tcompress.prune.magnitude import Magnitude
from tcompress.prune.masks import keep_mask, nm_keep_mask, parse_pattern
from tcompress.prune.sparsegpt import SparseGPT
from tcompress.prune.structured import Structured
from tcompress.prune.tokens import merge_tokens, unmerge_tokens
from tcompress.prune.wanda import Wanda

__all__ = ["Pruner", "Magnitude", "SparseGPT", "Structured", "Wanda", "keep_mask", "nm_keep_mask", "parse_pattern",
           "merge_tokens", "unmerge_tokens"]

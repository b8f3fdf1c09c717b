"""Layer 2: reading models (named offline models, HF folders, hub ids, GGUF) and the family
adapters that say where their blocks, linears, norms and embeddings are."""

from tcompress.models.adapters import Adapter, Block, Family, adapter
from tcompress.models.loading import CheckpointError, ModelSpecError, UnsupportedArchitectureError, drop_gguf_marker
from tcompress.models.named import NAMED, MissingPackageError

__all__ = ["Adapter", "Block", "Family", "adapter", "CheckpointError", "ModelSpecError", "UnsupportedArchitectureError",
           "drop_gguf_marker", "NAMED", "MissingPackageError"]

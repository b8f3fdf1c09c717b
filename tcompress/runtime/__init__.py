"""Layer 4: fast inference paths: a lean decoder with a static KV cache for Llama-family models, and a
loader that builds its modules without transformers' model code."""

from tcompress.runtime.decoder import Decoder
from tcompress.runtime.lean import load_for_decoding

__all__ = ["Decoder", "load_for_decoding"]

"""Fast inference paths: a lean decoder with a static KV cache for Llama-family models."""

from tcompress.runtime.decoder import Decoder

__all__ = ["Decoder"]

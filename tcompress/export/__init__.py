"""Layer 6: foreign formats for the runtimes users deploy on: compressed-tensors (vLLM,
transformers), GGUF (llama.cpp) and plain float Hugging Face folders, each checked by loading
it back."""

from tcompress.export.compressed import export_compressed_tensors, load_compressed_tensors
from tcompress.export.gguf import export_gguf
from tcompress.export.plain import dequantized, export_hf
from tcompress.export.verify import compare, compare_in_llama_cpp, llama_cpp_available

__all__ = ["export_compressed_tensors", "load_compressed_tensors", "export_gguf", "dequantized", "export_hf",
           "compare", "compare_in_llama_cpp", "llama_cpp_available"]

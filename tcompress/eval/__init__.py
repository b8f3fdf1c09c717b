"""Layer 6: perplexity, fidelity to the original, embedding quality, image accuracy, and the
benchmark harness (`bench`: latency, throughput and memory at several batch sizes)."""

from tcompress.eval.embeddings import embed, embedding_cosine, read_stsb, spearman, stsb_spearman
from tcompress.eval.harness import BenchReport, BenchRow, BenchSettings, bench, model_kind
from tcompress.eval.lm import Fidelity, fidelity, perplexity, window_nlls
from tcompress.eval.vision import accuracy

__all__ = ["BenchReport", "BenchRow", "BenchSettings", "bench", "model_kind", "embed", "embedding_cosine",
           "read_stsb", "spearman", "stsb_spearman", "Fidelity", "fidelity", "accuracy", "perplexity", "window_nlls"]

"""Evaluation: perplexity, fidelity to the original, embedding quality, image accuracy, latency."""

from tcompress.eval.embeddings import embed, embedding_cosine, read_stsb, spearman, stsb_spearman
from tcompress.eval.lm import Fidelity, fidelity, perplexity, window_nlls
from tcompress.eval.vision import accuracy

__all__ = ["embed", "embedding_cosine", "read_stsb", "spearman", "stsb_spearman", "Fidelity", "fidelity",
           "accuracy", "perplexity", "window_nlls"]

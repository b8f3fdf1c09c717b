"""Evaluation: perplexity, fidelity to the original, embedding quality, image accuracy."""

from tcompress.eval.embeddings import embed, embedding_cosine, read_stsb, spearman, stsb_spearman
from tcompress.eval.fidelity import Fidelity, fidelity
from tcompress.eval.images import accuracy
from tcompress.eval.perplexity import perplexity, window_nlls

__all__ = ["embed", "embedding_cosine", "read_stsb", "spearman", "stsb_spearman", "Fidelity", "fidelity",
           "accuracy", "perplexity", "window_nlls"]

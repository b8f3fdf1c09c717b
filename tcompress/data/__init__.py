"""Data: text corpora (calibration samples, evaluation windows) and labelled image sets."""

from tcompress.data.text import calibration, corpus_names, load_text, pydoc_text, tokenize, windows
from tcompress.data.vision import ImageSet, images, read_idx

__all__ = ["ImageSet", "images", "read_idx", "calibration", "corpus_names", "load_text", "pydoc_text",
           "tokenize", "windows"]

"""Saving compressed models in the formats runtimes load."""

from tcompress.export.checkpoint import RECORD_FILE, Record, record_of, save

__all__ = ["RECORD_FILE", "Record", "record_of", "save"]

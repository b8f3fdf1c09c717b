"""Layer 3: the record of what was applied, `tc.save` and `tc.load` together, atomic writes."""

from tcompress.checkpoint.load import load, load_packed, local_folder
from tcompress.checkpoint.record import RECORD_FILE, Record, record_of
from tcompress.checkpoint.save import disk_bytes, save

__all__ = ["load", "load_packed", "local_folder", "RECORD_FILE", "Record", "record_of", "disk_bytes", "save"]

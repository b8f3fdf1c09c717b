"""Layer 4: the method protocol and registry, target selection, block inputs, the layer-wise
pass and `tc.apply`."""

from tcompress.engine.apply import apply, change_each_linear
from tcompress.engine.inputs import BlockInputs, BlockRunner, Calibration, batches_of, capture, merged
from tcompress.engine.method import (
                                     KINDS,
                                     METHODS,
                                     BlockMethod,
                                     LinearMethod,
                                     Method,
                                     ModelMethod,
                                     Selection,
                                     method_from,
                                     methods_of,
                                     option,
                                     register,
                                     shape_of,
)
from tcompress.engine.sequential import observe, sequential
from tcompress.engine.spec import method_text, parse_method
from tcompress.engine.targets import check_targets, selected, targets

__all__ = ["apply", "change_each_linear", "BlockInputs", "BlockRunner", "Calibration", "batches_of", "capture",
           "merged", "KINDS", "METHODS", "BlockMethod", "LinearMethod", "Method", "ModelMethod", "Selection",
           "method_from", "methods_of", "option", "register", "shape_of", "observe", "sequential", "method_text",
           "parse_method", "check_targets", "selected", "targets"]

"""Reading float models with transformers: GGUF files (dequantized), HF folders and hub ids,
their configs, model classes and tokenizers or image processors.

`tc.load` (`checkpoint/load.py`) decides which of these a spec names and rebuilds packed
modules on top; this module only reads what transformers reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")


class ModelSpecError(ValueError):
    """The model spec names nothing loadable."""


class UnsupportedArchitectureError(ValueError):
    """The model's architecture is not one transformers (or tcompress) can build."""


class CheckpointError(ValueError):
    """A saved model folder that cannot be loaded as it is (missing, truncated, corrupted or
    changed files, tensors that do not fit the config)."""


def drop_gguf_marker(model: nn.Module) -> None:
    """Forget that weights came from a GGUF file: they are dequantized floats by now.

    transformers keeps a `gguf` quantization marker on such a model and then refuses to
    `save_pretrained` it; the weights themselves are ordinary tensors.
    """
    config = getattr(model, "config", None)
    marker = getattr(config, "quantization_config", None)
    method = marker.get("quant_method") if isinstance(marker, dict) else getattr(marker, "quant_method", None)
    if str(getattr(method, "value", method)) != "gguf":
        return
    del config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False


def read_gguf(path: Path, dtype: torch.dtype | str, with_processor: bool = True) -> tuple[nn.Module, Any]:
    """The float model (dequantized by transformers) and tokenizer in the GGUF file `path`."""
    import transformers  # here, not at import: tcompress's runtime imports without it

    try:
        processor = (transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
                     if with_processor else None)
        model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except (ValueError, KeyError, IndexError, EOFError) as error:
        raise UnsupportedArchitectureError(f"cannot read GGUF file {str(path)!r} (corrupted, truncated, or of an "
                                           f"architecture transformers cannot build): {error}") from error
    drop_gguf_marker(model)
    return model, processor


def read_config(source: str | Path) -> Any:
    """The transformers config of a folder or hub id, or a clear error."""
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(source)
    except ValueError as error:
        raise UnsupportedArchitectureError(f"cannot read the config of {str(source)!r}: {error}") from error
    except OSError as error:
        raise ModelSpecError(f"cannot load {str(source)!r}: not a model folder, and the hub said: {error}") from error


def model_class(config: Any) -> type:
    """The transformers class named by the config, else the causal-LM or base auto class."""
    import transformers

    for architecture in config.architectures or ():
        cls = getattr(transformers, architecture, None)
        if cls is None:
            raise UnsupportedArchitectureError(
                f"architecture {architecture!r} is not in transformers {transformers.__version__}"
            )
        return cls
    causal = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING
    return transformers.AutoModelForCausalLM if type(config) in causal else transformers.AutoModel


def read_float(source: str | Path, config: Any, dtype: torch.dtype | str, device_map: str | dict | None) -> nn.Module:
    """The float model of a folder or hub id, as transformers loads it; tensors that do not
    fit the config, or weights missing from the files (transformers would initialise them at
    random), are refused."""
    try:
        model, info = model_class(config).from_pretrained(source, config=config, dtype=dtype, device_map=device_map,
                                                          output_loading_info=True, ignore_mismatched_sizes=True)
    except (OSError, RuntimeError) as error:
        raise CheckpointError(f"{str(source)!r}: {str(error).strip().splitlines()[0]}") from None
    mismatched = [f"{key} {tuple(saved)} for {tuple(expected)}" for key, saved, expected in info["mismatched_keys"]]
    if mismatched or info["missing_keys"]:
        problem = (f"tensors of other shapes than config.json gives: {', '.join(mismatched[:3])}" if mismatched
                   else f"weights missing from the files: {', '.join(sorted(info['missing_keys'])[:5])}")
        raise CheckpointError(f"{str(source)!r}: {problem}")
    drop_gguf_marker(model)
    return model


def read_processor(source: str | Path) -> Any:
    """The tokenizer, else the image processor, else None."""
    import transformers

    folder = Path(source)
    if folder.is_dir():
        if any((folder / name).exists() for name in TOKENIZER_FILES):
            return transformers.AutoTokenizer.from_pretrained(folder)
        if (folder / "preprocessor_config.json").exists():
            return transformers.AutoImageProcessor.from_pretrained(folder)
        return None
    for auto in (transformers.AutoTokenizer, transformers.AutoImageProcessor):
        try:
            return auto.from_pretrained(source)
        except (OSError, ValueError):
            continue
    return None

"""Run a model once and collect what the losses read: logits, hidden states, attention
maps, and the values of chosen blocks (through the family adapter's value linear)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import Tensor, nn

from tcompress.core.modules import linear_weight
from tcompress.distill.base import Outputs
from tcompress.models.adapters import adapter


def forward(model: nn.Module, inputs: Tensor, needs: set[str], value_layers: list[int] = ()) -> Outputs:
    """One forward of `model` on token ids `[b, s]` or images `[b, c, h, w]`, keeping
    `needs` (see `Outputs`)."""
    kwargs = {"pixel_values": inputs} if inputs.is_floating_point() else {"input_ids": inputs, "use_cache": False}
    with captured_values(model, value_layers) as values:
        out = model(**kwargs, output_hidden_states="hidden_states" in needs, output_attentions="attentions" in needs)
    return Outputs(logits=getattr(out, "logits", None), hidden_states=tuple(out.hidden_states or ()),
                   attentions=tuple(out.attentions or ()), values=values)


@contextmanager
def captured_values(model: nn.Module, layers: list[int]) -> Iterator[dict[int, Tensor]]:
    """While inside, the output of each listed block's value linear lands in the dict."""
    values: dict[int, Tensor] = {}
    if not layers:
        yield values
        return
    parts = adapter(model)
    handles = []
    for index in set(layers):
        linear, third = _value_linear(parts, index)

        def keep(module, inputs, output, index=index, third=third):
            values[index] = output[..., 2 * output.shape[-1] // 3:] if third else output

        handles.append(linear.register_forward_hook(keep))
    try:
        yield values
    finally:
        for handle in handles:
            handle.remove()


def value_width(model: nn.Module) -> int:
    linear, third = _value_linear(adapter(model), 0)
    width = linear_weight(linear).shape[0]
    return width // 3 if third else width


def _value_linear(parts, index: int) -> tuple[nn.Module, bool]:
    """The linear producing block `index`'s values, and whether they are the last third of
    its output (GPT-2's fused q, k, v)."""
    source = parts.family.v_source if parts.family is not None else None
    if source is None:
        raise ValueError(f"value loss: the {parts.name} adapter does not know where this model's attention values are")
    block = parts.block_list()[index]
    return block.get_submodule(source), source.endswith("c_attn")


def use_eager_attention(model: nn.Module) -> None:
    """Attention maps are only returned by the eager implementation."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")

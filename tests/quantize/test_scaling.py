import pytest
import torch

import tcompress as tc
from tcompress.quantize.scaling import fold, input_groups

from helpers import TINY, build, example_inputs

FOLDABLE = {  # parts whose input scale has a module to fold into, per family
    "llama": {"attn_in", "ffn_in", "ffn_out"},  # o_proj: grouped-query attention, fewer v channels than o inputs
    "gemma3": {"attn_in", "ffn_in", "ffn_out"},  # the same, its norms multiplying by (1 + weight)
    "opt": {"attn_in", "attn_out", "ffn_in", "ffn_out"},  # fc2 through ReLU
    "gpt2": {"attn_in", "attn_out", "ffn_in"},  # v: the last third of the fused c_attn; GELU before c_proj
    "bert": {"attn_out"},  # post-norm: the norm's output is also the residual
    "vit": {"attn_in", "attn_out", "ffn_in"},
}


@pytest.mark.parametrize("family", sorted(TINY))
def test_folding_input_scales_leaves_the_float_model_unchanged(family):
    model, inputs = build(family), example_inputs(family)
    with torch.no_grad():
        before = model(**inputs)[0]
        ad = tc.adapter(model)
        generator = torch.Generator().manual_seed(0)
        for block in ad.blocks():
            groups = input_groups(ad, block)
            assert {g.part for g in groups if g.source is not None} == FOLDABLE[family]
            for group in groups:
                if group.source is not None:
                    fold(group, torch.rand(group.in_features, generator=generator) * 4 + 0.25)
        after = model(**inputs)[0]
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_folding_where_nothing_can_take_it_is_refused():
    model = build("bert")
    ad = tc.adapter(model)
    group = next(g for g in input_groups(ad, ad.blocks()[0]) if g.part == "attn_in")
    with pytest.raises(ValueError, match="explicit input scale"):
        fold(group, torch.ones(group.in_features))

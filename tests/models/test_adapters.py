import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import tcompress as tc
from tcompress.core.modules import is_linear, linear_weight

from helpers import Stack, build

EXPECTED = {
    # family: (adapter, attn_in, attn_out, ffn_in, ffn_out, heads, kv_heads, head_dim, embeddings, head)
    "llama": ("llama", ["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"], 4, 2, 16,
              ["model.embed_tokens"], "lm_head"),
    "opt": ("opt", ["q_proj", "k_proj", "v_proj"], ["out_proj"], ["fc1"], ["fc2"], 4, 4, 16,
            ["model.decoder.embed_tokens", "model.decoder.embed_positions"], "lm_head"),
    "gpt2": ("gpt2", ["c_attn"], ["c_proj"], ["c_fc"], ["c_proj"], 4, 4, 16, ["transformer.wte", "transformer.wpe"],
             "lm_head"),
    "bert": ("bert", ["query", "key", "value"], ["dense"], ["dense"], ["dense"], 4, 4, 16,
             ["embeddings.word_embeddings", "embeddings.position_embeddings", "embeddings.token_type_embeddings"], None),
    "vit": ("vit", ["q_proj", "k_proj", "v_proj"], ["o_proj"], ["fc1"], ["fc2"], 4, 4, 16,
            ["vit.embeddings.patch_embeddings.projection"], "classifier"),
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_family_adapter_finds_every_part(family):
    model = build(family)
    name, attn_in, attn_out, ffn_in, ffn_out, heads, kv_heads, head_dim, embeddings, head = EXPECTED[family]
    adapter = tc.adapter(model)
    assert adapter.name == name
    blocks = adapter.blocks()
    assert len(blocks) == 2
    last = lambda group: [n.rsplit(".", 1)[1] for n in group]  # noqa: E731
    for block in blocks:
        assert last(block.attn_in) == attn_in and last(block.attn_out) == attn_out
        assert last(block.ffn_in) == ffn_in and last(block.ffn_out) == ffn_out
        assert all(is_linear(m) and model.get_submodule(n) is m for n, m in block.linears.items())
        assert all(n.startswith(block.name + ".") for n in block.linears)
        assert block.attn_norm is not None and block.ffn_norm is not None
    assert (adapter.num_heads, adapter.num_kv_heads, adapter.head_dim) == (heads, kv_heads, head_dim)
    assert list(adapter.embeddings()) == embeddings
    assert (adapter.head()[0] if adapter.head() else None) == head


def test_bert_is_post_norm_so_attention_is_fed_by_the_previous_output_norm():
    model = build("bert")
    first, second = tc.adapter(model).blocks()
    assert first.attn_norm is model.embeddings.LayerNorm
    assert second.attn_norm is model.encoder.layer[0].output.LayerNorm
    assert first.ffn_norm is model.encoder.layer[0].attention.output.LayerNorm


def test_llama_groups_run_in_order_and_norms_feed_them():
    model = build("llama")
    block = tc.adapter(model).blocks()[1]
    assert [list(g) for g in block.groups()][0][0] == "model.layers.1.self_attn.q_proj"
    assert len(block.groups()) == 4
    assert block.attn_norm is model.model.layers[1].input_layernorm
    assert block.ffn_norm is model.model.layers[1].post_attention_layernorm


def test_base_model_without_head_still_resolves():
    model = build("llama").model  # LlamaModel: blocks at "layers", no LM head
    adapter = tc.adapter(model)
    assert adapter.name == "llama" and adapter.blocks_name == "layers"
    assert adapter.head() is None


def test_generic_adapter_takes_the_largest_stack_of_identical_blocks():
    adapter = tc.adapter(Stack())
    assert adapter.name == "generic" and adapter.blocks_name == "layers"
    blocks = adapter.blocks()
    assert len(blocks) == 3
    assert list(blocks[2].linears) == ["layers.2.f.0", "layers.2.f.2"]
    assert adapter.num_heads is None and adapter.head() is None


def test_generic_adapter_treats_a_module_without_blocks_as_one_block():
    linear = nn.Linear(4, 3)
    blocks = tc.adapter(linear).blocks()
    assert len(blocks) == 1 and blocks[0].module is linear and list(blocks[0].linears.values()) == [linear]


def test_conv1d_counts_as_a_transposed_linear():
    conv = Conv1D(nf=5, nx=3)  # in 3, out 5, stored [in, out]
    assert is_linear(conv)
    assert linear_weight(conv).shape == (5, 3)
    x = torch.randn(2, 3)
    torch.testing.assert_close(conv(x), x @ linear_weight(conv).t() + conv.bias)

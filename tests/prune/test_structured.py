import pytest
import torch
import transformers

import tcompress as tc
from tcompress.core.modules import linear_weight
from tcompress.prune import Structured
from tcompress.prune.shrink import drop_blocks, keep_channels, keep_heads

from helpers import TINY, build, example_inputs


def outputs(model, family):
    with torch.no_grad():
        out = tc.engine.inputs.call_model(model, example_inputs(family))
    return out["logits"] if "logits" in out else out["last_hidden_state"]


def zero_inputs(model, block, columns):
    """Zero the columns of the block's output linears: as if those heads / channels were gone."""
    for linear in block.values():
        linear_weight(linear).data[:, columns] = 0


@pytest.mark.parametrize("family, heads", [("llama", [0, 3]), ("llama", [2, 3]), ("vit", [1, 2, 3])])
def test_removing_heads_equals_zeroing_their_output(family, heads):
    model, reference = build(family), build(family)
    parts, ref_parts = tc.adapter(model), tc.adapter(reference)
    d = parts.head_dim
    gone = [h for h in range(parts.num_heads) if h not in heads]
    for block, ref_block in zip(parts.blocks(), ref_parts.blocks()):
        keep_heads(model, parts, block, heads)
        zero_inputs(reference, ref_block.attn_out, [c for h in gone for c in range(h * d, (h + 1) * d)])
    torch.testing.assert_close(outputs(model, family), outputs(reference, family))


def test_a_kv_group_keeps_as_many_query_heads_as_the_others():
    model = build("llama")  # 4 query heads over 2 KV heads
    parts = tc.adapter(model)
    with pytest.raises(ValueError, match="every KV group must keep as many"):
        keep_heads(model, parts, parts.blocks()[0], [0, 1, 2])


@pytest.mark.parametrize("family", sorted(TINY))
def test_removing_ffn_channels_equals_zeroing_them(family):
    model, reference = build(family), build(family)
    (down,) = tc.adapter(model).blocks()[0].ffn_out.values()
    width = linear_weight(down).shape[1]
    keep = torch.tensor([c for c in range(width) if c % 3])
    for block, ref_block in zip(tc.adapter(model).blocks(), tc.adapter(reference).blocks()):
        keep_channels(model, block, keep)
        zero_inputs(reference, ref_block.ffn_out, [c for c in range(width) if c % 3 == 0])
    torch.testing.assert_close(outputs(model, family), outputs(reference, family))


@pytest.mark.parametrize("family", sorted(TINY))
def test_dropping_a_block_equals_skipping_it(family):
    model, reference = build(family), build(family)
    drop_blocks(model, tc.adapter(model), [0])
    skipped = tc.adapter(reference).blocks()[0].module

    def identity(module, args, kwargs, out):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    skipped.register_forward_hook(identity, with_kwargs=True)
    assert model.config.num_hidden_layers == 1
    torch.testing.assert_close(outputs(model, family), outputs(reference, family))


def calib_of(family, n=4):
    inputs = example_inputs(family, batch=n, seqlen=16)
    return [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(n)]


def parameters(model):
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("parts", [("heads", "channels"), ("blocks",), ("heads", "channels", "blocks")])
def test_target_share_of_parameters_gives_a_smaller_model_plain_transformers_loads(parts, tmp_path, tokenizer):
    model = build("llama")
    before = parameters(model)
    tc.apply(model, Structured(target_params=0.8, parts=parts), calib_of("llama"), progress=False)
    assert parameters(model) <= 0.8 * before
    assert parameters(model) > 0.5 * before  # not far past the target
    tc.save(model, tmp_path / "s", tokenizer)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    ids = example_inputs("llama")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model(ids).logits)


def test_explicit_amounts_per_part():
    model = build("llama")  # 2 blocks, 4 heads over 2 KV heads, FFN 96
    tc.apply(model, Structured(remove_heads=2, remove_channels=32, remove_blocks=1), calib_of("llama"), progress=False)
    config = model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (1, 2, 64)
    assert config.num_key_value_heads in (1, 2)
    assert torch.isfinite(outputs(model, "llama")).all()


def test_bert_channels_and_blocks_shrink_and_heads_are_refused():
    model = build("bert")
    with pytest.raises(ValueError, match="config cannot hold"):
        tc.apply(model, Structured(target_params=0.9), calib_of("bert"), progress=False)
    tc.apply(model, Structured(target_params=0.9, parts=("channels", "blocks")), calib_of("bert"), progress=False)
    assert model.config.intermediate_size < 96 or model.config.num_hidden_layers < 2


@pytest.mark.parametrize("kwargs, match", [
    ({"target_params": 1.0}, r"target_params must be a fraction in \(0, 1\)"),
    ({"target_params": 0.0}, r"target_params must be a fraction in \(0, 1\)"),
    ({}, "give target_params"),
    ({"target_params": 0.5, "remove_blocks": 1}, "not both"),
    ({"target_params": 0.5, "parts": ("layers",)}, "parts must be"),
])
def test_bad_structured_settings_are_refused_at_once(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Structured(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"remove_heads": 4}, "every one of the 4 heads"), ({"remove_heads": 1}, "multiple of 2"),
    ({"remove_blocks": 2}, "every one of the 2 blocks"), ({"remove_channels": 96}, "every FFN channel"),
])
def test_removing_everything_is_refused_before_work(kwargs, match):
    model = build("llama")
    with pytest.raises(ValueError, match=match):
        tc.apply(model, Structured(**kwargs), calib_of("llama"), progress=False)
    assert model.config.num_hidden_layers == 2 and model.config.intermediate_size == 96


def test_a_target_that_cannot_be_met_is_a_clear_error():
    model = build("llama")
    with pytest.raises(ValueError, match="no way to remove"):
        tc.apply(model, Structured(target_params=0.05, parts=("heads",)), calib_of("llama"), progress=False)


def test_head_and_channel_scores_are_the_energies_they_remove():
    model = build("llama")
    parts = tc.adapter(model)
    calib = calib_of("llama")
    scores = tc.prune.importance.measure(model, parts, calib, progress=False)
    block = parts.blocks()[1]
    seen = {}
    hooks = [block.module.register_forward_pre_hook(lambda m, a, k: seen.setdefault("x", []).append(
                 (a[0] if a else k["hidden_states"])), with_kwargs=True),
             block.attn_out[f"{block.name}.self_attn.o_proj"].register_forward_pre_hook(
                 lambda m, a: seen.setdefault("o", []).append(a[0])),
             block.ffn_out[f"{block.name}.mlp.down_proj"].register_forward_pre_hook(
                 lambda m, a: seen.setdefault("d", []).append(a[0]))]
    with torch.no_grad():
        for batch in calib:
            model(**batch)
    for hook in hooks:
        hook.remove()
    residual = sum(x.double().pow(2).sum() for x in seen["x"])
    d = parts.head_dim
    w_o = block.module.self_attn.o_proj.weight.double()
    for h in range(parts.num_heads):
        energy = sum((o.double()[..., h * d : (h + 1) * d] @ w_o[:, h * d : (h + 1) * d].t()).pow(2).sum()
                     for o in seen["o"])
        assert scores.heads[1, h].item() == pytest.approx((energy / residual).item(), rel=1e-4)
    w_down = block.module.mlp.down_proj.weight.double()
    for j in (0, 17, 95):
        energy = sum((x.double()[..., j : j + 1] @ w_down[:, j : j + 1].t()).pow(2).sum() for x in seen["d"])
        assert scores.channels[1, j].item() == pytest.approx((energy / residual).item(), rel=1e-4)

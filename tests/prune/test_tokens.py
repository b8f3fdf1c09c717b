"""Token merging: the merge against a literal reference, r = 0 leaves the model as it was,
token counts and sizes, and clear errors."""

from __future__ import annotations

import pytest
import torch
import transformers

from tcompress.prune.tokens import MergingBlock, merge, merge_tokens, unmerge_tokens

from reference import tome as tome_reference


def tiny_vit(layers: int = 3, distillation: bool = False):
    torch.manual_seed(0)
    fields = dict(image_size=28, patch_size=4, num_channels=1, hidden_size=64, intermediate_size=96,
                  num_hidden_layers=layers, num_attention_heads=4, num_labels=10)
    if distillation:
        return transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**fields)).eval()
    return transformers.ViTForImageClassification(transformers.ViTConfig(**fields)).eval()


@pytest.mark.parametrize("protected", [1, 2])
def test_merge_matches_the_literal_reference(protected):
    torch.manual_seed(0)
    x, metric = torch.randn(2, 11, 6), torch.randn(2, 11, 5)
    sizes = torch.randint(1, 4, (2, 11, 1)).float()
    merged, new_sizes = merge(x, metric, sizes, r=3, protected=protected)
    assert merged.shape == (2, 8, 6) and new_sizes.shape == (2, 8, 1)
    for i in range(2):
        expected, expected_sizes = tome_reference.merge(x[i], metric[i], sizes[i, :, 0], 3, protected)
        torch.testing.assert_close(merged[i], expected)
        torch.testing.assert_close(new_sizes[i, :, 0], expected_sizes)
        torch.testing.assert_close(merged[i, :protected], x[i, :protected])  # never merged, still first


def test_r_zero_equals_the_unmerged_model_and_switching_off_restores_it():
    model = tiny_vit()
    pixels = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
        merge_tokens(model, 0)
        assert isinstance(model.vit.layers[0], MergingBlock)
        torch.testing.assert_close(model(pixel_values=pixels).logits, expected, rtol=0, atol=0)
        merge_tokens(model, 4)
        assert not torch.allclose(model(pixel_values=pixels).logits, expected, atol=1e-4)
        unmerge_tokens(model)
        torch.testing.assert_close(model(pixel_values=pixels).logits, expected, rtol=0, atol=0)
    assert not any(isinstance(m, MergingBlock) for m in model.modules())


@pytest.mark.parametrize("distillation", [False, True])
def test_token_counts_and_sizes(distillation):
    model = tiny_vit(distillation=distillation)
    merge_tokens(model, [5, 4, 3])
    seen = []
    for block in model.modules():
        if isinstance(block, MergingBlock):
            block.register_forward_hook(lambda m, i, out: seen.append((out.shape[1], m.sizes.value.clone())))
    with torch.no_grad():
        model(pixel_values=torch.randn(2, 1, 28, 28))
    start = 49 + 1 + distillation
    assert [count for count, _ in seen] == [start - 5, start - 9, start - 12]
    for count, sizes in seen:
        assert sizes.shape == (2, count, 1)
        assert torch.equal(sizes.sum(1), torch.full((2, 1), float(start)))  # every patch counted once
        assert torch.equal(sizes[:, : 1 + distillation], torch.ones(2, 1 + distillation, 1))


def test_bad_r_is_refused():
    model = tiny_vit()
    with pytest.raises(ValueError, match="only 50 tokens are left there, so at most 24 can merge"):
        merge_tokens(model, 25)
    with pytest.raises(ValueError, match="at block 2"):
        merge_tokens(model, [20, 10, 10])
    with pytest.raises(ValueError, match="a list of 3"):
        merge_tokens(model, [1, 2])
    with pytest.raises(ValueError, match="needs a ViT"):
        merge_tokens(transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)), 1)
    assert not any(isinstance(m, MergingBlock) for m in model.modules())

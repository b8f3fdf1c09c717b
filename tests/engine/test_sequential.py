from dataclasses import dataclass

import pytest
import torch
from torch import nn

import tcompress as tc
from tcompress.engine.sequential import sequential

from helpers import TINY, Stack, build, example_inputs


def full_block_outputs(model, batch):
    """Each block's output in an ordinary full forward, via hooks."""
    outputs = {}
    blocks = tc.adapter(model).block_list()
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o[0] if isinstance(o, tuple) else o))
             for i, b in enumerate(blocks)]
    with torch.no_grad():
        tc.engine.inputs.call_model(model, batch)
    for hook in hooks:
        hook.remove()
    return [outputs[i] for i in range(len(blocks))]


def samples(family, n=3):
    """Calibration batches: n single-sample input dicts."""
    inputs = example_inputs(family, batch=n)
    return [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(n)]


@pytest.mark.parametrize("family", sorted(TINY))
def test_sequential_outputs_equal_the_full_models_hidden_states(family):
    model = build(family)
    batches = samples(family)
    seen = {}
    sequential(model, batches, progress=False, on_block=lambda block, hidden: seen.__setitem__(block.index, list(hidden)))
    for j, batch in enumerate(batches):
        expected = full_block_outputs(model, batch)
        for i, hidden in enumerate(expected):
            torch.testing.assert_close(seen[i][j], hidden, rtol=1e-5, atol=1e-5)


def test_token_id_tensor_is_split_into_batches():
    model = build("llama")
    ids = example_inputs("llama", batch=4)["input_ids"]
    out = sequential(model, ids, batch_size=2, progress=False)
    assert len(out) == 2 and out[0].shape == (2, 12, 64)
    torch.testing.assert_close(torch.cat(out), full_block_outputs(model, ids)[-1], rtol=1e-5, atol=1e-5)


@dataclass(frozen=True)
class HalveRows(tc.LinearMethod):
    """Test method: records the inputs it saw, then halves the first row of each linear."""

    name = "test-halve-rows"
    log: list = None  # (name, mean |x|) per linear, in the order applied

    def init_stats(self, linear):
        return []

    def observe(self, stats, x):
        return stats + [x.clone()]

    def apply(self, linear, stats, name):
        self.log.append((name, torch.cat(stats)))
        linear.weight.data[0] *= 0.5


@dataclass(frozen=True)
class SequentialHalveRows(HalveRows):
    name = "test-halve-rows-seq"
    true_sequential = True


def test_later_blocks_see_the_outputs_of_already_changed_blocks():
    model, reference = build("llama"), build("llama")
    ids = example_inputs("llama", batch=2)["input_ids"]
    log = []
    out = sequential(model, ids, HalveRows(log=log), progress=False)
    for name, _ in log:  # the same change, made directly
        reference.get_submodule(name).weight.data[0] *= 0.5
    torch.testing.assert_close(torch.cat(out), full_block_outputs(reference, ids)[-1], rtol=1e-5, atol=1e-5)
    assert [n.split(".")[2] for n, _ in log] == ["0"] * 7 + ["1"] * 7


def test_inputs_observed_in_block_two_come_from_the_changed_block_one():
    model = build("llama")
    ids = example_inputs("llama", batch=1)["input_ids"]
    log = []
    sequential(model, ids, HalveRows(log=log), progress=False)
    q_input = dict(log)["model.layers.1.self_attn.q_proj"]
    captured = {}
    layer = model.model.layers[1].self_attn.q_proj
    handle = layer.register_forward_hook(lambda m, a, o: captured.setdefault("x", a[0].reshape(-1, 64)))
    with torch.no_grad():
        model(ids)  # the fully changed model: block 0 changed, as the engine had it
    handle.remove()
    # block 1's own change does not affect its q_proj input (the norm comes first)
    torch.testing.assert_close(q_input, captured["x"], rtol=1e-5, atol=1e-5)


def test_true_sequential_observes_each_group_after_earlier_groups_changed():
    ids = example_inputs("llama", batch=1)["input_ids"]
    at_once, in_turn = [], []
    sequential(build("llama"), ids, HalveRows(log=at_once), progress=False)
    sequential(build("llama"), ids, SequentialHalveRows(log=in_turn), progress=False)
    first, second = dict(at_once), dict(in_turn)
    name = "model.layers.0.self_attn.q_proj"  # first group: same input either way
    torch.testing.assert_close(first[name], second[name])
    name = "model.layers.0.self_attn.o_proj"  # sees q/k/v after their change only in turn
    assert not torch.allclose(first[name], second[name])


def test_block_method_gets_the_block_and_its_inputs():
    seen = []

    @dataclass(frozen=True)
    class Probe(tc.BlockMethod):
        name = "test-probe"

        def apply_block(self, adapter, block, inputs, run):
            seen.append((block.index, len(inputs), run(inputs, 0).shape))

    sequential(build("opt"), example_inputs("opt", batch=3)["input_ids"], Probe(), progress=False)
    assert seen == [(0, 3, (1, 12, 64)), (1, 3, (1, 12, 64))]


def test_plain_module_and_offload_device():
    torch.manual_seed(0)
    model = Stack().eval()
    x = torch.randn(5, 8)
    out = sequential(model, [x], device="cpu", offload="cpu", progress=False)
    torch.testing.assert_close(out[0], model(x))


def test_apply_records_the_method_and_needs_data():
    model = build("llama")
    with pytest.raises(ValueError, match="needs calibration data"):
        tc.apply(model, HalveRows(log=[]))
    tc.apply(model, HalveRows(log=[]), example_inputs("llama", batch=1)["input_ids"], progress=False)
    assert tc.checkpoint.record_of(model).applied[-1]["method"] == "test-halve-rows"


@pytest.mark.parametrize("calib, match", [([], "empty"), (torch.empty(0, 4, dtype=torch.long), "empty")])
def test_empty_calibration_is_refused(calib, match):
    with pytest.raises(ValueError, match=match):
        sequential(build("llama"), calib, progress=False)


def test_bad_batch_size_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        sequential(build("llama"), torch.zeros(2, 4, dtype=torch.long), batch_size=0, progress=False)


def test_apply_rejects_what_is_not_a_method():
    with pytest.raises(TypeError, match="method must be"):
        tc.apply(nn.Linear(2, 2), "gptq")


@pytest.mark.parametrize("chunk_tokens", [8192, 1, 30])  # all batches joined; one chunk each; two, then one
@pytest.mark.parametrize("true_sequential", [True, False])
@pytest.mark.parametrize("family", ["llama", "bert"])
def test_one_pass_equals_passes_batch_by_batch(family, true_sequential, chunk_tokens):
    from tcompress.packed import QuantLinear
    from tcompress.quantize import GPTQ

    calib = samples(family, n=3)
    for i, sample in enumerate(calib[1:] if family == "bert" else []):
        sample["attention_mask"][0, -(i + 2):] = 0  # every sample padded: masks to concatenate
    models = {one_pass: build(family) for one_pass in (True, False)}
    method = GPTQ(bits=3, group_size=32, true_sequential=true_sequential)
    outputs = {one_pass: sequential(model, calib, method, one_pass=one_pass, progress=False, chunk_tokens=chunk_tokens)
               for one_pass, model in models.items()}
    assert [h.shape for h in outputs[True]] == [h.shape for h in outputs[False]]  # split back batch by batch
    for a, b in zip(outputs[True], outputs[False]):
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)
    quantized = [name for name, m in models[True].named_modules() if isinstance(m, QuantLinear)]
    assert len(quantized) == {"llama": 14, "bert": 12}[family]
    for name in quantized:
        a, b = models[True].get_submodule(name).codes(), models[False].get_submodule(name).codes()
        assert (a == b).float().mean() > 0.99, name  # the same Hessians, summed in another order


def test_chunks_join_consecutive_batches_up_to_a_token_budget_and_split_back_exactly():
    from tcompress.engine.inputs import capture, chunked, sizes_of, split

    model = build("llama")
    first = tc.adapter(model).blocks()[0].module
    batches = [example_inputs("llama", batch=n) for n in (1, 2, 1, 3)]
    inputs = capture(model, [first], batches, "cpu")
    seqlen = inputs.hidden[0].shape[1]
    chunks = chunked(inputs, tokens=3 * seqlen)  # 1 + 2 samples, then 1 (1 + 3 is over), then 3
    assert [h.shape[0] for h in chunks.hidden] == [3, 1, 3]
    assert len(chunks.args) == len(chunks.kwargs) == 3
    saved = [h.clone() for h in inputs.hidden]
    pieces = split([h + 1 for h in chunks.hidden], sizes_of(inputs))
    assert [h.shape for h in pieces] == [h.shape for h in saved]
    assert all(torch.equal(h, s + 1) for h, s in zip(pieces, saved))
    assert len(chunked(inputs, tokens=1)) == 4  # a batch over the budget is a chunk of its own


def test_merged_inputs_concatenate_per_sample_arguments_and_refuse_other_lengths():
    from tcompress.engine.inputs import capture, merged

    model = build("bert")
    first = tc.adapter(model).blocks()[0].module
    padded = samples("bert", n=2)
    padded[1]["attention_mask"][0, -5:] = 0  # both padded, differently
    inputs = capture(model, [first], padded, "cpu")
    one = merged(inputs)
    assert one.hidden[0].shape[0] == 2 and one.args[0][0].shape[0] == 2  # the padding masks, one per sample
    short = example_inputs("bert", batch=1, seqlen=7)
    assert merged(capture(model, [first], samples("bert", n=1) + [short], "cpu")) is None


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_chunk_tokens_must_be_a_positive_integer(bad):
    from tcompress.quantize import GPTQ

    with pytest.raises(ValueError, match="chunk_tokens must be a positive integer"):
        sequential(build("llama"), samples("llama"), GPTQ(), chunk_tokens=bad, progress=False)

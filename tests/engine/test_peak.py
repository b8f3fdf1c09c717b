"""The memory estimate: what each part of a run holds, from shapes alone."""

import pytest
from accelerate import init_empty_weights

import tcompress as tc
from tcompress.engine.peak import PROCESS_BYTES, predict_peak, tensor_bytes

from helpers import tiny_llama


@pytest.fixture
def empty():
    with init_empty_weights():
        return tiny_llama(num_hidden_layers=4, hidden_size=64, intermediate_size=256)


def test_streaming_holds_one_block_of_weights_not_the_model(empty):
    gptq = tc.quantize.GPTQ(bits=4, group_size=16)
    block = tensor_bytes(empty.model.layers[0])
    in_memory = predict_peak(empty, gptq, 8, 32)
    streamed = predict_peak(empty, gptq, 8, 32, lazy=True)
    assert in_memory.parts["weights"] == tensor_bytes(empty) + block // 4
    assert streamed.parts["weights"] == tensor_bytes(empty) - 4 * block + 2 * block
    assert streamed.parts["process"] == PROCESS_BYTES and streamed.total < in_memory.total


def test_activations_grow_with_the_tokens_and_the_pausing(empty):
    gptq = tc.quantize.GPTQ(bits=4, group_size=16)
    observe_then_change = tc.quantize.GPTQ(bits=4, group_size=16, true_sequential=False)
    small, large = predict_peak(empty, gptq, 8, 32), predict_peak(empty, gptq, 16, 32)
    assert large.parts["hidden states"] == 2 * small.parts["hidden states"] == 2 * 2 * 8 * 32 * 64 * 4
    assert large.parts["activations"] == 2 * small.parts["activations"] == 2 * 8 * 32 * (256 + 3 * 64) * 4
    chunked = predict_peak(empty, observe_then_change, 16, 32, chunk_tokens=64)  # one chunk at a time
    assert chunked.parts["activations"] == 64 * (256 + 3 * 64) * 4


def test_the_method_counts_its_statistics_and_work(empty):
    gptq = tc.quantize.GPTQ(bits=4, group_size=16)
    estimate = predict_peak(empty, gptq, 1, 1)  # one token: the method's share outweighs the chunk's
    stats = 3 * 4 * 64**2 + 4 * 256**2  # q/k/v, o and gate/up share an input width of 64; down's is 256
    work = 4 * (2 * 256**2 + 3 * 64 * 256)
    assert estimate.parts["method"] == stats + work
    assert "GB (process" in estimate.text()

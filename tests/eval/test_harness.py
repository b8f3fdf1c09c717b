import json

import pytest
import torch

import tcompress as tc

from helpers import build, tiny_llama

FAST = tc.BenchSettings(batch_sizes=(1, 2), seqlen=8, new_tokens=3, repeats=2, warmup=1)


def test_bench_two_language_models_in_one_run(tmp_path):
    report = tc.bench({"a": build("llama"), "b": build("gpt2")}, FAST, progress=False)
    phases = {(r.model, r.phase, r.batch) for r in report.rows}
    assert phases == {(m, p, b) for m in "ab" for p in ("prefill", "decode") for b in (1, 2)}
    assert all(r.latency_ms > 0 and r.throughput > 0 and r.memory_mb > 0 for r in report.rows)
    facts = {f.name: f for f in report.models}
    assert facts["a"].parameters == sum(p.numel() for p in build("llama").parameters())
    buffers = sum(b.numel() * 4 for b in build("llama").buffers())  # rotary frequencies
    assert facts["a"].bytes_in_memory == 4 * facts["a"].parameters + buffers
    assert facts["a"].bytes_on_disk > facts["a"].bytes_in_memory * 0.9
    report.to_json(tmp_path / "b.json")
    report.plot(tmp_path / "b.png")
    assert json.loads((tmp_path / "b.json").read_text())["rows"][0]["model"] == "a"
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert "| model" in report.table()


def test_bench_encoder_and_image_classifier():
    report = tc.bench({"bert": build("bert"), "vit": build("vit")}, FAST, disk=False, progress=False)
    assert {(r.model, r.phase) for r in report.rows} == {("bert", "forward"), ("vit", "forward")}
    assert report.models[0].bytes_on_disk is None


def test_rounds_keep_the_median_round_of_each_model():
    from dataclasses import replace

    report = tc.bench({"vit": build("vit")}, replace(FAST, rounds=3, batch_sizes=(1, 2)), disk=False, progress=False)
    assert [(r.model, r.batch) for r in report.rows] == [("vit", 1), ("vit", 2)]
    rows = [tc.eval.harness.BenchRow("m", "forward", 1, 8, latency, 1000 / latency, peak)
            for latency, peak in ((5.0, 10.0), (9.0, 30.0), (7.0, 20.0))]
    (median,) = tc.eval.harness.median_rows(rows)
    assert (median.latency_ms, median.throughput, median.memory_mb) == (7.0, 1000 / 7.0, 30.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_sizes": ()}, "batch_sizes"), ({"batch_sizes": (1, 0)}, "batch_sizes"),
    ({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup"), ({"rounds": 0}, "rounds"),
])
def test_bad_bench_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tc.BenchSettings(**kwargs)


def test_bench_refuses_plain_modules_and_nothing():
    import torch

    with pytest.raises(ValueError, match="bench measures"):
        tc.bench({"x": torch.nn.Linear(2, 2)}, FAST)
    with pytest.raises(ValueError, match="empty"):
        tc.bench({}, FAST)


def test_peak_memory_sees_a_freed_allocation_and_resets_between_uses():
    from tcompress.core.memory import PeakMemory

    with PeakMemory(torch.device("cpu")) as big:
        block = torch.ones(50 * 2**20)  # 200 MB, touched
        del block
    with PeakMemory(torch.device("cpu")) as small:
        pass
    assert big.peak - small.peak > 150 * 2**20


class SlowFirstCalls(torch.nn.Module):
    """A ViT whose first forwards pay a one-off cost (as a kernel built on first use would)."""

    def __init__(self, model, slow_calls: int = 2, delay: float = 0.05):
        super().__init__()
        self.model, self.calls, self.slow_calls, self.delay = model, 0, slow_calls, delay
        self.config, self.main_input_name = model.config, model.main_input_name

    def forward(self, **inputs):
        import time

        self.calls += 1
        if self.calls <= self.slow_calls:
            time.sleep(self.delay)
        return self.model(**inputs)


def test_one_off_costs_of_the_first_calls_are_warmed_up_not_timed():
    model = SlowFirstCalls(build("vit"))
    first = tc.bench({"vit": model}, FAST, disk=False, progress=False)
    again = tc.bench({"vit": model}, FAST, disk=False, progress=False)  # all warm by now
    for row, retimed in zip(first.rows, again.rows):
        assert row.latency_ms < 3 * retimed.latency_ms + 5, (row, retimed)


def test_memory_is_each_models_own_not_the_processs():
    small, big = build("llama"), tiny_llama(intermediate_size=16384).eval()  # 25 MB more of FFN weights
    report = tc.bench({"small": small, "big": big}, FAST, disk=False, progress=False)
    memory = {(r.model, r.batch): r.memory_mb for r in report.rows if r.phase == "prefill"}
    own = {name: tc.core.tensor_bytes(model) / 2**20 for name, model in (("small", small), ("big", big))}
    for (name, _), megabytes in memory.items():  # its tensors and a few MB of activations, not the process's
        assert own[name] <= megabytes < own[name] + 20, (name, megabytes, own)


def test_the_plot_shows_throughput_and_speed_up(tmp_path):
    report = tc.bench({"a": build("vit"), "b": build("vit")}, FAST, disk=False, progress=False)
    report.plot(tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"

"""`tc.bench`: latency, throughput and memory of models at several batch sizes.

Causal LMs are measured in two phases: prefill (one forward over the prompt, filling the KV
cache) and decode (one token at a time through the cache, reported per token). Encoders
and image classifiers are measured as one forward. Every figure is the median of
`repeats` timed runs after warm-up runs (at least `warmup`, more until two in a row agree), on
random inputs of the stated shape. Memory is each model's own: its tensors plus the peak its
runs added (allocated bytes on CUDA, resident memory on CPU), not the process's, which holds
every model loaded beside it.
"""

from __future__ import annotations

import inspect
import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from tcompress.checkpoint.save import disk_bytes
from tcompress.core.memory import PeakMemory
from tcompress.core.sizes import parameter_count, tensor_bytes
from tcompress.report import format_table, plot_throughput
from tcompress.runtime.decoder import DECODER_MODEL_TYPES, Decoder

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16)
ENGINES = ("auto", "hf", "tcompress")


@dataclass(frozen=True)
class BenchSettings:
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    seqlen: int = 128  # prompt length (LMs) or sequence length (encoders)
    new_tokens: int = 32  # decode steps per run (LMs)
    repeats: int = 5
    warmup: int = 1
    engine: str = "auto"  # LMs: "hf" (the model's forward and cache), "tcompress" (runtime.Decoder), "auto"
    # every model measured this many times in turn, the median kept: on a shared machine a slow
    # spell then slows every model a little instead of one model a lot
    rounds: int = 1

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if not self.batch_sizes or any(not isinstance(b, int) or b <= 0 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes must be positive integers, got {self.batch_sizes!r}")
        for name in ("seqlen", "new_tokens", "repeats", "rounds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup!r}")


@dataclass
class ModelFacts:
    name: str
    kind: str
    parameters: int
    bytes_in_memory: int
    bytes_on_disk: int | None


@dataclass
class BenchRow:
    model: str
    phase: str  # "prefill", "decode" or "forward"
    batch: int
    seqlen: int
    latency_ms: float  # per forward; per generated token for decode
    throughput: float  # tokens/s (LM phases) or items/s (forward)
    memory_mb: float  # the model's tensors plus the most the run added (activations, caches): this model's own


@dataclass
class BenchReport:
    settings: BenchSettings
    models: list[ModelFacts] = field(default_factory=list)
    rows: list[BenchRow] = field(default_factory=list)
    threads: int = field(default_factory=torch.get_num_threads)

    def table(self) -> str:
        return format_table([asdict(row) for row in self.rows])

    def facts_table(self) -> str:
        return format_table([asdict(facts) for facts in self.models])

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    def plot(self, path: str | Path, baseline: str | None = None) -> None:
        """Throughput against batch size, the speed-up over `baseline` (default: the first
        model) labelled at each point."""
        plot_throughput(self.rows, path, title=f"throughput vs batch size ({self.threads} threads)", baseline=baseline)


def model_kind(model: nn.Module) -> str:
    """'causal-lm', 'image-classifier', 'encoder' or 'module'."""
    if hasattr(model, "generate") and getattr(model, "can_generate", lambda: False)():
        return "causal-lm"
    if getattr(model, "main_input_name", None) == "pixel_values":
        return "image-classifier"
    if getattr(model, "main_input_name", None) == "input_ids":
        return "encoder"
    return "module"


WARMUP_LIMIT = 8  # warm-up runs at most, until two in a row agree
STEADY = 0.2  # within 20% of each other


def _timed(run: Callable[[], float], settings: BenchSettings) -> list[float]:
    """`settings.repeats` timings of `run` (which returns the seconds it measured), after
    warm-up runs: at least `settings.warmup` (and two), and more while the last two differ by over 20%
    (a first use that pays one-off costs, such as allocating and touching fresh memory,
    building a kernel or starting threads, is then never timed as the model's)."""
    warm = [run() for _ in range(settings.warmup)]
    while settings.warmup and len(warm) < WARMUP_LIMIT and not _steady(warm):
        warm.append(run())
    return [run() for _ in range(settings.repeats)]


def _steady(times: list[float]) -> bool:
    """Whether the last two runs agree (two at least are needed to tell)."""
    return len(times) >= 2 and abs(times[-1] - times[-2]) <= STEADY * min(times[-1], times[-2])


def _seconds(fn: Callable[[], Any], device: torch.device) -> Callable[[], float]:
    """`fn` as a run that returns its wall time."""
    def run() -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start

    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_name(model: nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache`; accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _bench_causal_lm(name: str, model: nn.Module, batch: int, settings: BenchSettings) -> list[BenchRow]:
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (batch, settings.seqlen), generator=torch.Generator().manual_seed(0)).to(device)
    with PeakMemory(device) as memory:
        prefill, step = _lm_engine(model, batch, settings)

        def decode() -> float:
            """Seconds per token of `new_tokens` decode steps after a prefill."""
            token = prefill(prompt)
            _sync(device)
            start = time.perf_counter()
            for _ in range(settings.new_tokens):
                token = step(token)
            _sync(device)
            return (time.perf_counter() - start) / settings.new_tokens

        prefill_s = statistics.median(_timed(_seconds(lambda: prefill(prompt), device), settings))
        decode_s = statistics.median(_timed(decode, settings))
    used = model_memory_mb(model, memory)
    return [
        BenchRow(name, "prefill", batch, settings.seqlen, prefill_s * 1e3, batch * settings.seqlen / prefill_s, used),
        BenchRow(name, "decode", batch, settings.seqlen, decode_s * 1e3, batch / decode_s, used),
    ]


def model_memory_mb(model: nn.Module, memory: PeakMemory) -> float:
    """The model's own memory in a run: its tensors plus what the run added at its peak (the
    process's resident set holds every model loaded beside it too)."""
    return (tensor_bytes(model) + memory.added) / 2**20


def uses_fast_decoder(model: nn.Module, engine: str) -> bool:
    """Whether `engine` means tcompress's decoder for this model ("auto": where it applies)."""
    if engine == "auto":
        return getattr(getattr(model, "config", None), "model_type", None) in DECODER_MODEL_TYPES
    return engine == "tcompress"


def _lm_engine(model: nn.Module, batch: int, settings: BenchSettings) -> tuple[Callable, Callable]:
    """`prefill(prompt) -> next token` and `step(token) -> next token` (greedy) for the engine."""
    if uses_fast_decoder(model, settings.engine):
        decoder = Decoder(model, max_length=settings.seqlen + settings.new_tokens + 1, batch_size=batch)
        return (lambda prompt: decoder.prefill(prompt).argmax(-1)), (lambda token: decoder.step(token).argmax(-1))
    cache_name = _cache_name(model)
    # as generation does: logits of the last prompt position only
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    state: dict[str, Any] = {}

    def prefill(prompt: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=prompt, use_cache=True, **last_only)
        state["cache"] = out[cache_name]
        return out.logits[:, -1:].argmax(-1)

    def step(token: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=token, use_cache=True, **{cache_name: state["cache"]})
        state["cache"] = out[cache_name]
        return out.logits[:, -1:].argmax(-1)

    return prefill, step


def _example_inputs(model: nn.Module, kind: str, batch: int, settings: BenchSettings) -> dict[str, torch.Tensor]:
    config = model.config
    generator = torch.Generator().manual_seed(0)
    if kind == "image-classifier":
        size = config.image_size
        return {"pixel_values": torch.randn(batch, config.num_channels, size, size, generator=generator)}
    ids = torch.randint(0, config.vocab_size, (batch, settings.seqlen), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _bench_forward(name: str, model: nn.Module, kind: str, batch: int, settings: BenchSettings) -> list[BenchRow]:
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in _example_inputs(model, kind, batch, settings).items()}
    with PeakMemory(device) as memory:
        seconds = statistics.median(_timed(_seconds(lambda: model(**inputs), device), settings))
    seqlen = settings.seqlen if kind == "encoder" else 0
    return [BenchRow(name, "forward", batch, seqlen, seconds * 1e3, batch / seconds, model_memory_mb(model, memory))]


def bench(models: dict[str, nn.Module] | nn.Module, settings: BenchSettings | None = None, *,
          disk: bool = True, progress: bool = True) -> BenchReport:
    """Measure each model at every batch size of `settings`; one report for all of them."""
    if isinstance(models, nn.Module):
        models = {"model": models}
    if not models:
        raise ValueError("models is empty: pass {'name': model, ...}")
    settings = settings or BenchSettings()
    kinds = {name: model_kind(model) for name, model in models.items()}
    for name, kind in kinds.items():
        if kind == "module":
            raise ValueError(f"model {name!r}: bench measures Hugging Face LMs, encoders and image classifiers")
    report = BenchReport(settings)
    jobs = [(name, batch) for name in models for batch in settings.batch_sizes]
    for name, model in models.items():
        size = disk_bytes(model) if disk else None
        report.models.append(ModelFacts(name, kinds[name], parameter_count(model), tensor_bytes(model), size))
    measured: list[BenchRow] = []
    with torch.inference_mode():
        for name, batch in tqdm(jobs * settings.rounds, desc="bench", disable=not progress):
            model, kind = models[name], kinds[name]
            model.eval()
            if kind == "causal-lm":
                measured += _bench_causal_lm(name, model, batch, settings)
            else:
                measured += _bench_forward(name, model, kind, batch, settings)
    report.rows = median_rows(measured)
    return report


def median_rows(rows: list[BenchRow]) -> list[BenchRow]:
    """One row per model, phase and batch: the median latency of its rounds (throughput from
    the same round), the highest peak memory; in first-seen order."""
    groups: dict[tuple, list[BenchRow]] = {}
    for row in rows:
        groups.setdefault((row.model, row.phase, row.batch), []).append(row)
    merged = []
    for group in groups.values():
        middle = sorted(group, key=lambda r: r.latency_ms)[(len(group) - 1) // 2]
        merged.append(replace(middle, memory_mb=max(r.memory_mb for r in group)))
    return merged

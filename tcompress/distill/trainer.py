"""The distillation trainer, on `accelerate`: one loop for one CPU, several processes
(`accelerate launch --num_processes 2`), or GPUs with DDP, FSDP or DeepSpeed.

Training data are token blocks `[n, seqlen]` (or images `[n, c, h, w]`). Step `k` reads the global batch
`k * batch_size ... (k + 1) * batch_size` of a fixed per-epoch permutation, and each
process takes every `world`-th sequence of it, so the loss curve does not depend on how
many processes share the work, and a resumed run reads exactly the batches it would have.
The teacher runs without gradients; learnable parts of the losses (hint projections)
train with the student and are dropped at the end.

Writes into `out`: `log.json` (every step's losses, the evaluations), `loss.png`, and
`checkpoint/` every `save_every` steps, from which a rerun of the same command resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tcompress.checkpoint.lazy import require_materialized
from tcompress.distill.base import DistillLoss, Outputs
from tcompress.distill.forward import forward, use_eager_attention

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "constant")
PRECISIONS = ("no", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: `batch_size` sequences per optimizer step over all processes, in
    forward passes of `micro_batch_size` (gradient accumulation makes up the rest)."""

    steps: int
    batch_size: int = 8
    micro_batch_size: int | None = None  # None: the whole per-process batch at once
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"  # after warm-up: cosine decay to 10% of lr, or constant
    max_grad_norm: float | None = 1.0
    eval_every: int = 0  # 0: evaluate only before and after
    save_every: int = 0  # 0: no checkpoints
    mixed_precision: str = "no"
    seed: int = 0

    def __post_init__(self) -> None:
        for field in ("steps", "batch_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.micro_batch_size is not None and (not isinstance(self.micro_batch_size, int)
                                                  or self.micro_batch_size <= 0):
            raise ValueError(f"micro_batch_size must be a positive integer or None, got {self.micro_batch_size!r}")
        for field in ("warmup_steps", "eval_every", "save_every"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 0:
                raise ValueError(f"{field} must be an integer >= 0, got {getattr(self, field)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")

    def lr_factor(self, step: int) -> float:
        """Multiplier of `lr` at optimizer step `step` (from 0)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class Student(nn.Module):
    """The student and the losses' learnable parts, as the one module that trains (so data
    parallel wrappers see every parameter); its forward returns the weighted loss."""

    def __init__(self, model: nn.Module, losses: list[DistillLoss]):
        super().__init__()
        self.model, self.losses = model, nn.ModuleList(losses)
        self.needs = {need for loss in losses for need in loss.needs}
        self.value_layers = sorted({i for loss in losses for i in loss.value_layers()[0]})

    def forward(self, ids: Tensor, teacher: Outputs | None) -> tuple[Tensor, Tensor]:
        """Total weighted loss and the unweighted parts `[len(losses)]`."""
        outputs = forward(self.model, ids, self.needs, self.value_layers)
        parts = torch.stack([loss(outputs, teacher, ids) for loss in self.losses])
        weights = torch.tensor([loss.weight for loss in self.losses], device=parts.device)
        return (parts * weights).sum(), parts.detach()


@dataclass
class History:
    """What a run measured: per-step losses and the evaluations."""

    steps: list[dict[str, float]]
    evals: list[dict[str, float]]
    tokens: int = 0  # token data: sequences times their length
    samples: int = 0  # sequences or images
    seconds: float = 0.0

    def write(self, out: Path) -> None:
        (out / "log.json").write_text(json.dumps(asdict(self), indent=1) + "\n")


def distill(student: nn.Module, data: Tensor, losses: list[DistillLoss], config: TrainConfig,
            teacher: nn.Module | None = None, out: str | Path | None = None, evaluate: Any = None,
            progress: bool = True) -> History:
    """Train `student` in place on token blocks `data` `[n, seqlen]` (or images) with the weighted
    `losses`; `teacher` (no gradients) feeds the losses that need it. `evaluate(model) ->
    dict` runs before training, every `config.eval_every` steps and at the end. With `out`,
    a checkpoint there from an earlier run of the same settings is resumed."""
    from accelerate import Accelerator

    check_inputs(student, data, losses, teacher)
    out = Path(out) if out is not None else None
    for loss in losses:
        loss.bind(student, teacher)
    if any("attentions" in loss.needs for loss in losses):
        use_eager_attention(student)
        use_eager_attention(teacher)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
    torch.manual_seed(config.seed)
    wrapped = Student(student, losses)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, config.lr_factor)
    wrapped, optimizer = accelerator.prepare(wrapped, optimizer)
    accelerator.register_for_checkpointing(schedule)
    if teacher is not None:
        teacher.eval().requires_grad_(False).to(accelerator.device)
    start, history = _resume(accelerator, config, out)
    trainer = _Loop(accelerator, wrapped, optimizer, schedule, teacher, data, config)
    if start == 0 and evaluate is not None:
        history.evals.append({"step": 0, **_evaluate(accelerator, wrapped, evaluate)})
    bar = tqdm(range(start, config.steps), desc="distill", disable=not (progress and accelerator.is_main_process),
               initial=start, total=config.steps)
    began = time.perf_counter() - history.seconds
    for step in bar:
        history.steps.append(trainer.step(step, [loss.name for loss in losses]))
        history.samples += config.batch_size
        history.tokens += 0 if data.is_floating_point() else config.batch_size * data.shape[1]
        bar.set_postfix(loss=f"{history.steps[-1]['loss']:.4f}")
        done = step + 1
        if evaluate is not None and (done == config.steps or (config.eval_every and done % config.eval_every == 0)):
            history.evals.append({"step": done, **_evaluate(accelerator, wrapped, evaluate)})
        history.seconds = time.perf_counter() - began
        if out is not None and config.save_every and done % config.save_every == 0 and done < config.steps:
            _save_checkpoint(accelerator, config, out, history)
    accelerator.wait_for_everyone()
    if out is not None and accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        history.write(out)
        plot_losses(history, out / "loss.png")
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
    student.eval()
    return history


def check_inputs(student: nn.Module, data: Tensor, losses: list[DistillLoss], teacher: nn.Module | None) -> None:
    """Clear errors before any work."""
    require_materialized(student, "distillation")
    if teacher is not None:
        require_materialized(teacher, "a distillation teacher")
    tokens = isinstance(data, Tensor) and not data.is_floating_point() and data.ndim == 2 and data.shape[1] >= 2
    images = isinstance(data, Tensor) and data.is_floating_point() and data.ndim == 4
    if not (tokens or images) or data.shape[0] == 0:
        shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
        raise ValueError(f"data must be token ids [n, seqlen] (seqlen >= 2) or images [n, channels, height, width], "
                         f"n >= 1; got {shape}")
    if not losses:
        raise ValueError("losses is empty: give at least one, e.g. LogitKD() or LanguageModelLoss()")
    needing = [loss.name for loss in losses if loss.needs_teacher]
    if needing and teacher is None:
        raise ValueError(f"loss(es) {needing} compare with a teacher, but teacher is None")
    if not any(p.requires_grad for p in student.parameters()):
        raise ValueError("the student has no trainable parameters")


class _Loop:
    """One optimizer step: micro-batches of this process's share, then the update."""

    def __init__(self, accelerator, wrapped, optimizer, schedule, teacher, data: Tensor, config: TrainConfig):
        self.accelerator, self.wrapped, self.optimizer, self.schedule = accelerator, wrapped, optimizer, schedule
        self.teacher, self.data, self.config = teacher, data, config
        self.module = accelerator.unwrap_model(wrapped)
        world = accelerator.num_processes
        if config.batch_size % world:
            raise ValueError(f"batch_size={config.batch_size} must be a multiple of the {world} processes")
        self.share = config.batch_size // world
        self.micro = min(config.micro_batch_size or self.share, self.share)

    def step(self, step: int, names: list[str]) -> dict[str, float]:
        self.wrapped.train()
        ids = batch_ids(len(self.data), self.config.batch_size, step, self.config.seed)
        mine = ids[self.accelerator.process_index:: self.accelerator.num_processes]
        chunks = mine.split(self.micro)
        total, parts = 0.0, 0.0
        for i, chunk in enumerate(chunks):
            batch = self.data[chunk].to(self.accelerator.device)
            sync = i == len(chunks) - 1
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.wrapped):
                with self.accelerator.autocast():
                    teacher_out = self._teacher(batch)
                    loss, part = self.wrapped(batch, teacher_out)
                share = len(chunk) / len(mine)
                self.accelerator.backward(loss * share)
            total, parts = total + loss.detach() * share, parts + part * share
        if self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.wrapped.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        lr = self.schedule.get_last_lr()[0]
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        total = self.accelerator.reduce(torch.as_tensor(total).reshape(1), "mean")
        parts = self.accelerator.reduce(parts, "mean")
        return {"step": step + 1, "loss": total.item(), "lr": lr, **{n: p.item() for n, p in zip(names, parts)}}

    @torch.no_grad()
    def _teacher(self, batch: Tensor) -> Outputs | None:
        if self.teacher is None or not any(loss.needs_teacher for loss in self.module.losses):
            return None
        needs = {need for loss in self.module.losses if loss.needs_teacher for need in loss.needs}
        layers = sorted({i for loss in self.module.losses for i in loss.value_layers()[1]})
        return forward(self.teacher, batch, needs, layers)


def batch_ids(n: int, batch_size: int, step: int, seed: int) -> Tensor:
    """Indices of the global batch `step`: consecutive slices of per-epoch permutations."""
    first = step * batch_size
    epochs = range(first // n, (first + batch_size - 1) // n + 1)
    order = torch.cat([torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + e))
                       for e in epochs])
    offset = first - epochs[0] * n
    return order[offset: offset + batch_size]


def _evaluate(accelerator, wrapped, evaluate) -> dict[str, float]:
    model = accelerator.unwrap_model(wrapped).model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return dict(evaluate(model))
    finally:
        model.train(was_training)


def _resume(accelerator, config: TrainConfig, out: Path | None) -> tuple[int, History]:
    state = out / "checkpoint" / "state.json" if out is not None else None
    if state is None or not state.is_file():
        return 0, History(steps=[], evals=[])
    saved = json.loads(state.read_text())
    if saved["config"] != asdict(config):
        raise ValueError(f"{str(out)!r} holds a checkpoint of a run with other settings ({saved['config']}); "
                         f"use another --out, or delete {str(out / 'checkpoint')!r} to start over")
    accelerator.load_state(str(out / "checkpoint"))
    log.info("resuming from step %d of %s", saved["step"], out)
    history = History(**saved["history"])
    return saved["step"], history


def _save_checkpoint(accelerator, config: TrainConfig, out: Path, history: History) -> None:
    accelerator.wait_for_everyone()
    folder = out / "checkpoint"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        state = {"step": history.steps[-1]["step"], "config": asdict(config), "history": asdict(history)}
        (folder / "state.json").write_text(json.dumps(state) + "\n")


def plot_losses(history: History, path: Path) -> None:
    """Each loss part over the steps, and the evaluations, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in (history.steps[0] if history.steps else {}) if k not in ("step", "lr")]
    evals = [k for k in (history.evals[0] if history.evals else {}) if k != "step"]
    fig, axes = plt.subplots(1, 1 + bool(evals), figsize=(6 + 4 * bool(evals), 4), squeeze=False)
    steps = [row["step"] for row in history.steps]
    for key in keys:
        axes[0][0].plot(steps, [row[key] for row in history.steps], label=key)
    axes[0][0].set(xlabel="step", ylabel="loss", title="training losses")
    axes[0][0].legend()
    for key in evals:
        axes[0][1].plot([row["step"] for row in history.evals], [row[key] for row in history.evals], "o-", label=key)
        axes[0][1].set(xlabel="step", title="evaluation")
        axes[0][1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""`tcompress distill` and `tcompress qat`: training commands over `distill()`.

The trained model is saved to `--out` (it loads with `tc.load`); the loss log, the loss
curves (PNG) and, while training, the checkpoint live beside it in `OUT.training/`, so
rerunning an interrupted command resumes it.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

from torch import nn

from tcompress.checkpoint.load import load
from tcompress.checkpoint.save import save
from tcompress.cli.common import EPILOG, add_eval_and_output, group_size, out_folder, positive
from tcompress.data.text import calibration, windows
from tcompress.distill.data import CompletionsAPI, blocks_of_texts, generate_texts, text_blocks
from tcompress.distill.losses import parse_losses
from tcompress.distill.students import student_from
from tcompress.distill.trainer import TrainConfig, distill
from tcompress.engine.apply import apply
from tcompress.eval.lm import perplexity
from tcompress.quantize.gptq import GPTQ
from tcompress.quantize.qat import QAT, convert_qat, prepare_qat
from tcompress.report import format_table


def add(commands: argparse._SubParsersAction) -> None:
    epilog = EPILOG
    distill = commands.add_parser(
        "distill", help="train a student from a teacher (logits, hidden states, attention; or teacher-written text)",
        epilog=epilog + " STUDENT is a MODEL too, or a student cut from the teacher: 'blocks=22', 'ffn=1152', "
        "'blocks=22,ffn=1152'.")
    distill.add_argument("--teacher", required=True, metavar="MODEL")
    distill.add_argument("--student", required=True, metavar="STUDENT")
    distill.add_argument("--loss", default="kl:1.0", help="weighted losses: kl, lm, hidden, attention, value "
                         "(default kl:1.0; e.g. kl:1.0,hidden:0.5)")
    distill.add_argument("--temperature", type=float, default=1.0, help="of the kl loss (default 1.0)")
    add_training_flags(distill)
    distill.set_defaults(run=run_distill)

    qat = commands.add_parser(
        "qat", help="quantization-aware training (STE, LSQ scales), distilled from the float model; packed output",
        epilog=epilog)
    qat.add_argument("model", metavar="MODEL")
    qat.add_argument("--bits", type=int, default=4, help="2, 3, 4 or 8 (default 4)")
    qat.add_argument("--group-size", type=group_size, default=64,
                     help="input channels per scale, or 'channel' (default 64)")
    qat.add_argument("--symmetric", action="store_true", help="symmetric grid (default asymmetric)")
    qat.add_argument("--fixed-scales", action="store_true", help="train weights only (default: LSQ scales too)")
    qat.add_argument("--init", choices=["rtn", "gptq"], default="rtn",
                     help="start from round-to-nearest (default) or from GPTQ on the calibration data")
    qat.add_argument("--loss", default="kl:1.0", help="default kl:1.0 against the float model; lm: data only")
    add_training_flags(qat)
    qat.set_defaults(run=run_qat)


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="pydoc", help="corpus name or text file to train on; 'teacher': text the "
                      "teacher writes (default pydoc)")
    data.add_argument("--seqlen", type=positive, default=512, help="tokens per sequence (default 512)")
    data.add_argument("--samples", type=positive, help="use at most N sequences of the data")
    data.add_argument("--generate", type=positive, default=256, help="with --data teacher: texts to write (default 256)")
    data.add_argument("--max-new-tokens", type=positive, default=256, help="with --data teacher (default 256)")
    data.add_argument("--prompts", help="with --data teacher: a text file, one prompt a line (default: none, the "
                      "teacher writes from its start token)")
    data.add_argument("--api", metavar="URL", help="with --data teacher: an OpenAI-style completions endpoint "
                      "(e.g. http://localhost:8000/v1) writes the text instead")
    data.add_argument("--api-model", default="default", help="the model name the endpoint expects")
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=positive, required=True, help="optimizer steps")
    train.add_argument("--batch-size", type=positive, default=8, help="sequences per step (default 8)")
    train.add_argument("--micro-batch-size", type=positive, help="sequences per forward (gradient accumulation)")
    train.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    train.add_argument("--warmup", type=int, default=0, help="warm-up steps (default 0)")
    train.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (default: never)")
    train.add_argument("--seed", type=int, default=0, help="data order and calibration seed (default 0)")
    add_eval_and_output(parser, "trained", "perplexity on DATA before, every --eval-every steps, after")
    parser.add_argument("--eval-every", type=int, default=0, help="default: before and after only")


def run_distill(args: argparse.Namespace) -> None:
    config = _train_config(args)
    losses = parse_losses(args.loss, kl={"temperature": args.temperature})
    out = out_folder(args.out)
    sizes = student_sizes(args.student)
    teacher, tok = load(args.teacher)
    student = load(args.student)[0] if sizes is None else student_from(teacher, **sizes)
    data = training_data(args, teacher, tok)
    needs_teacher = any(loss.needs_teacher for loss in losses)
    _train(args, student, tok, data, losses, config, teacher if needs_teacher else None, out)


def run_qat(args: argparse.Namespace) -> None:
    qat = QAT(bits=args.bits, group_size=args.group_size, symmetric=args.symmetric,
              learn_scales=not args.fixed_scales)
    config = _train_config(args)
    losses = parse_losses(args.loss)
    out = out_folder(args.out)
    model, tok = load(args.model)
    teacher = copy.deepcopy(model) if any(loss.needs_teacher for loss in losses) else None
    data = training_data(args, model, tok)
    if args.init == "gptq":
        calib = calibration("pydoc", tok, n=128, seqlen=512, seed=args.seed)
        apply(model, GPTQ(bits=args.bits, group_size=args.group_size, symmetric=args.symmetric), calib)
    prepare_qat(model, qat)
    _train(args, model, tok, data, losses, config, teacher, out, finish=convert_qat)


def student_sizes(spec: str) -> dict[str, int] | None:
    """The sizes of a student cut from the teacher ('blocks=N,ffn=M'); None: a model to load."""
    if "=" not in spec:
        return None
    sizes = {}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if key not in ("blocks", "ffn") or not value.isdigit():
            raise ValueError(f"--student {spec!r}: expected a model, or sizes like 'blocks=22,ffn=1152'")
        sizes[key] = int(value)
    return sizes


def training_data(args: argparse.Namespace, teacher: nn.Module, tok: Any):
    """Token blocks `[n, seqlen]` of the corpus, or of text the teacher (or --api) writes."""
    if args.data != "teacher":
        return text_blocks(args.data, tok, seqlen=args.seqlen, n=args.samples)
    prompts = None
    if args.prompts:
        prompts = [line for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    writer = (CompletionsAPI(args.api, args.api_model, max_tokens=args.max_new_tokens) if args.api else teacher)
    texts = generate_texts(writer, tok, prompts, n=args.generate, max_new_tokens=args.max_new_tokens,
                           seed=args.seed)
    return blocks_of_texts(texts, tok, args.seqlen)[: args.samples]


def _train_config(args: argparse.Namespace):
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                       lr=args.lr, warmup_steps=args.warmup, eval_every=args.eval_every,
                       save_every=args.save_every, seed=args.seed)


def _train(args, student, tok, data, losses, config, teacher, out: Path, finish=None) -> None:
    evaluate = None
    if args.eval:
        ids = windows(args.eval, tok, seqlen=args.eval_seqlen, limit=args.eval_windows)
        evaluate = lambda model: {"perplexity": perplexity(model, tok, ids, seqlen=args.eval_seqlen,  # noqa: E731
                                                           progress=False)}
    start = time.perf_counter()
    history = distill(student, data, losses, config, teacher=teacher, out=Path(f"{out}.training"), evaluate=evaluate)
    if finish is not None:
        finish(student)
    save(student, out, tok)
    rows = [{"step": e["step"], **{k: v for k, v in e.items() if k != "step"}} for e in history.evals]
    if rows:
        print(format_table(rows))
    print(f"\ntrained {config.steps} steps on {history.tokens} tokens in {time.perf_counter() - start:.0f} s; "
          f"wrote {out} and {out}.training/ (log.json, loss.png)")

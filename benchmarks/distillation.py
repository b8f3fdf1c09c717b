"""Distillation and QAT on the default model as teacher, one run, one table.

    python benchmarks/distillation.py [--data ../shared/data] [--student DIR] [--steps 40]

(a) The structured student with 25% fewer parameters (pruned here with `Structured`,
target 0.75, pydoc calibration 128 x 512, seed 0; or `--student DIR`, a saved one), then
distilled with the logit loss for `--steps` steps, once on C4 text
(../shared/data/c4-validation-sample) and once on text the teacher writes from its start
token (no corpus at all). (b) W3 GPTQ, and QAT at W3 distilled from the float model for the
same steps on C4, starting from the GPTQ result (or round-to-nearest: `--qat-from gptq,rtn`).
Group size 64: the default model's hidden size, 576, is not a multiple of 128.

Rows: WikiText-2 perplexity (first 16 windows of 2048), the share of the student's gap to
the teacher recovered, tokens trained and wall time. Loss curves: `loss-*.png`.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

from common import show

import tcompress as tc
from tcompress.core.sizes import parameter_count
from tcompress.distill import LogitKD, TrainConfig, blocks_of_texts, distill, generate_texts, text_blocks
from tcompress.distill.trainer import plot_losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--student", help="a saved 75%% structured student (default: prune one here)")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--eval-seqlen", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of each training run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--qat-lr", type=float, default=5e-5)
    parser.add_argument("--qat-group", type=int, default=64, help="group size of W3 (128 does not divide 576)")
    parser.add_argument("--qat-from", default="gptq", help="QAT starting points: gptq and/or rtn")
    parser.add_argument("--generate", type=int, default=96, help="texts the teacher writes")
    parser.add_argument("--parts", default="pruned,qat", help="which parts to run: pruned, qat")
    parser.add_argument("--teacher-ppl", type=float, help="the teacher's perplexity, if already measured "
                        "on the same windows (it is deterministic): skips measuring it again")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    os.environ.setdefault("TCOMPRESS_DATA", str(Path(args.data).resolve()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    teacher, tok = tc.load(args.model)
    seqlen = args.eval_seqlen
    windows = tc.data.windows(Path(args.data) / "wikitext2" / "wiki.test.raw", tok, seqlen=seqlen, limit=args.windows)
    ppl = lambda m: tc.eval.perplexity(m, tok, windows, seqlen=seqlen, progress=False)  # noqa: E731
    c4 = text_blocks("c4", tok, seqlen=args.seqlen, split="validation")
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, micro_batch_size=4, lr=args.lr,
                         warmup_steps=max(1, args.steps // 10))
    print(f"train on {len(c4)} C4 blocks of {args.seqlen} tokens", flush=True)
    rows = [{"model": "teacher (fp32)", "wt2 ppl": args.teacher_ppl or ppl(teacher)}]
    show(rows)
    teacher_ppl = rows[0]["wt2 ppl"]
    if "pruned" in args.parts:
        rows += pruned_student_rows(args, teacher, tok, ppl, teacher_ppl, c4, config, out)
    if "qat" in args.parts:
        rows += qat_rows(args, teacher, tok, ppl, c4, config, out)
    tc.report.write_json(out / f"distillation-{args.parts.replace(',', '-')}.json", rows)
    print(f"\n{args.model}: WikiText-2 perplexity ({args.windows} x {seqlen}); {args.steps} steps of "
          f"{args.batch_size} x {args.seqlen} tokens per run")
    print(tc.report.format_table(rows))


def pruned_student_rows(args, teacher, tok, ppl, teacher_ppl, c4, config, out) -> list[dict]:
    start = time.perf_counter()
    if args.student:
        student, _ = tc.load(args.student)
    else:
        student = copy.deepcopy(teacher)
        calib = tc.data.calibration("pydoc", tok, n=128, seqlen=512, seed=0)
        tc.apply(student, tc.prune.Structured(target_params=0.75), calib, progress=False)
    before = ppl(student)
    rows = [{"model": "student: structured 75% params", "wt2 ppl": before, "params (M)": params(student),
             "seconds": time.perf_counter() - start}]
    show(rows)
    recovered = lambda p: (before - p) / (before - teacher_ppl)  # noqa: E731

    trained = copy.deepcopy(student)
    row = train_row(trained, c4, teacher, config, out / "loss-student-c4.png", ppl)
    rows.append({"model": "  + logit KD on C4", **row, "gap recovered": recovered(row["wt2 ppl"])})
    show(rows[-1:])

    start = time.perf_counter()
    texts = generate_texts(teacher, tok, n=args.generate, max_new_tokens=args.seqlen + 32, batch_size=16, seed=0)
    generated = blocks_of_texts(texts, tok, args.seqlen)
    writing = time.perf_counter() - start
    trained = copy.deepcopy(student)
    row = train_row(trained, generated, teacher, config, out / "loss-student-generated.png", ppl)
    row["seconds"] += writing
    rows.append({"model": f"  + logit KD on teacher-written text ({len(generated)} blocks, {writing:.0f} s to write)",
                 **row, "gap recovered": recovered(row["wt2 ppl"])})
    show(rows[-1:])
    return rows


def qat_rows(args, teacher, tok, ppl, c4, config, out) -> list[dict]:
    qat = tc.quantize.QAT(bits=3, group_size=args.qat_group)
    config = TrainConfig(**{**config.__dict__, "lr": args.qat_lr})
    gptq = copy.deepcopy(teacher)
    start = time.perf_counter()
    calib = tc.data.calibration("pydoc", tok, n=128, seqlen=512, seed=0)
    tc.apply(gptq, tc.quantize.GPTQ(bits=3, group_size=args.qat_group), calib, progress=False)
    label = f"W3 g{args.qat_group}"
    rows = [{"model": f"GPTQ {label}", "wt2 ppl": ppl(gptq), "seconds": time.perf_counter() - start}]
    show(rows)
    for start_from in args.qat_from.split(","):
        student = gptq if start_from == "gptq" else copy.deepcopy(teacher)
        tc.quantize.prepare_qat(student, qat)
        row = train_row(student, c4, teacher, config, out / f"loss-qat-from-{start_from}.png", ppl,
                        finish=tc.quantize.convert_qat)
        rows.append({"model": f"QAT {label} from {start_from.upper()}, logit KD on C4", **row})
        show(rows[-1:])
    return rows


def train_row(student, data, teacher, config, plot, ppl, finish=None) -> dict:
    history = distill(student, data, [LogitKD()], config, teacher=teacher)
    if finish is not None:
        finish(student)
    plot_losses(history, plot)
    row = {"wt2 ppl": ppl(student), "tokens": history.tokens, "seconds": history.seconds,
           "final loss": history.steps[-1]["loss"]}
    return row if finish is not None else {**row, "params (M)": params(student)}


def params(model) -> float:
    return parameter_count(model) / 1e6


if __name__ == "__main__":
    main()

"""`tcompress train-vit`: train the vit-fmnist model (the offline vision subject) from scratch."""

from __future__ import annotations

import argparse

from tcompress.checkpoint.load import load
from tcompress.cli.common import positive
from tcompress.distill.vit_fmnist import (
    check_distillation,
    check_widening,
    load_teacher,
    save_teacher,
    train_cnn_teacher,
    train_vit_fmnist,
)


def add(commands: argparse._SubParsersAction) -> None:
    train_vit = commands.add_parser(
        "train-vit", help="train the vit-fmnist model (the offline vision subject) from scratch",
        epilog="The recipe that made the weights shipped as `vit-fmnist`; Fashion-MNIST comes from "
        "$TCOMPRESS_DATA/fashion-mnist or Debian's dataset-fashion-mnist.")
    train_vit.add_argument("--out", required=True, help="folder to save the trained model to")
    train_vit.add_argument("--epochs", type=positive, default=8, help="default 8")
    train_vit.add_argument("--batch-size", type=positive, default=128, help="default 128")
    train_vit.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    train_vit.add_argument("--augmented", action="store_true", help="random crops and flips (default off)")
    train_vit.add_argument("--start", metavar="DIR", help="train on from this saved model (default: from scratch)")
    train_vit.add_argument("--teacher", default="none", metavar="none|cnn|FILE",
                           help="cnn: first train a small CNN, then distil it into the ViT (its answers beside the "
                           "true labels, see --distillation); FILE: a CNN saved with --save-teacher; "
                           "default none")
    train_vit.add_argument("--distillation", choices=("hard", "soft"), default="hard",
                           help="with a teacher: its arg-max class (hard, DeiT) or its probabilities (soft, "
                           "KL at --temperature); default hard")
    train_vit.add_argument("--temperature", type=float, default=2.0, help="with --distillation soft (default 2)")
    train_vit.add_argument("--ema", type=float, metavar="DECAY",
                           help="keep a moving average of the weights (e.g. 0.998 per step) and save it; default off")
    train_vit.add_argument("--teacher-epochs", type=positive, default=10, help="with --teacher cnn (default 10)")
    train_vit.add_argument("--save-teacher", metavar="FILE", help="with --teacher cnn: save the trained CNN here "
                           "(safetensors) for later cycles")
    train_vit.add_argument("--intermediate-size", type=positive, metavar="N",
                           help="with --start: first widen every MLP to N channels, keeping what the model computes")
    train_vit.add_argument("--seed", type=int, default=0, help="default 0")
    train_vit.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    check_distillation(args.distillation, args.temperature, args.ema)
    if args.intermediate_size is not None:
        if args.start is None:
            raise ValueError("--intermediate-size widens a trained model: give --start too")
        try:
            check_widening(load(args.start)[0], args.intermediate_size)  # before the teacher's training
        except ValueError as error:
            raise ValueError(f"--intermediate-size: {error}") from None
    if args.save_teacher and args.teacher != "cnn":
        raise ValueError("--save-teacher saves the CNN that --teacher cnn trains")
    teacher = None
    if args.teacher == "cnn":
        teacher, accuracy = train_cnn_teacher(epochs=args.teacher_epochs, seed=args.seed)
        print(f"CNN teacher: test accuracy {accuracy:.4f} after {args.teacher_epochs} epochs")
        if args.save_teacher:
            save_teacher(teacher, args.save_teacher)
    elif args.teacher != "none":
        try:
            teacher = load_teacher(args.teacher)
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(f"--teacher: {error}") from None
    result = train_vit_fmnist(args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                              augmented=args.augmented, start=args.start, teacher=teacher,
                              distillation=args.distillation, temperature=args.temperature, ema=args.ema,
                              intermediate_size=args.intermediate_size)
    print(f"test accuracy {result['accuracy']:.4f} after {args.epochs} epochs in {result['seconds']:.0f} s; "
          f"wrote {args.out}")

"""`tcompress ...`: a thin command line over the Python API."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

from torch import nn

EPILOG = "MODEL is a named offline model (default, smollm2-135m, minilm, vit-fmnist), a Hugging Face folder, a .gguf file or a hub id."


def module_kind(module: nn.Module) -> str:
    from tcompress.models.adapters import is_linear

    if is_linear(module):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith(("RMSNorm", "LayerNorm")):
        return "norm"  # HF families define their own RMSNorm classes
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return "conv"
    return "other"


def parameters_by_kind(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(parameters, bytes) per module kind, tied weights counted once where first seen."""
    seen: set[int] = set()
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for module in model.modules():
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            totals[module_kind(module)][0] += tensor.numel() if isinstance(tensor, nn.Parameter) else 0
            totals[module_kind(module)][1] += tensor.numel() * tensor.element_size()
    return {kind: (count, size) for kind, (count, size) in totals.items()}


def cmd_info(args: argparse.Namespace) -> None:
    import tcompress as tc
    from tcompress.eval.latency import model_kind
    from tcompress.report import format_table

    model, _ = tc.load(args.model)
    adapter = tc.adapter(model)
    by_kind = parameters_by_kind(model)
    total_params = sum(count for count, _ in by_kind.values())
    print(f"model        {args.model}")
    print(f"architecture {type(model).__name__} ({model_kind(model)}; family: {adapter.name})")
    print(f"blocks       {len(adapter.block_list())}")
    print(f"hidden size  {adapter.hidden_size}; heads {adapter.num_heads}, KV heads {adapter.num_kv_heads}, "
          f"head dim {adapter.head_dim}")
    print(f"parameters   {total_params:,} ({total_params / 1e6:.1f}M)\n")
    rows = [{"kind": kind, "parameters": count, "MB": size / 2**20, "share": f"{100 * count / max(total_params, 1):.2f}%"}
            for kind, (count, size) in sorted(by_kind.items(), key=lambda kv: -kv[1][1])]
    print(format_table(rows))


def cmd_eval(args: argparse.Namespace) -> None:
    import tcompress as tc
    from tcompress.eval.latency import model_kind
    from tcompress.report import format_table

    model, processor = tc.load(args.model)
    kind = model_kind(model)
    if kind == "causal-lm":
        if args.data is None:
            raise SystemExit("eval: --data is required for a language model (e.g. --data pydoc)")
        value = tc.eval.perplexity(model, processor, args.data, seqlen=args.seqlen, windows=args.windows,
                                   batch_size=args.batch_size)
        result = {"model": args.model, "data": args.data, "seqlen": args.seqlen, "windows": args.windows,
                  "perplexity": value}
    elif kind == "encoder":
        if args.data is None or not str(args.data).endswith(".tsv"):
            raise SystemExit("eval: an encoder is measured on STS-B: pass --data path/to/stsb/dev.tsv")
        result = {"model": args.model, "data": args.data, "stsb_spearman": tc.eval.stsb_spearman(model, processor, args.data)}
    else:
        images = tc.data.images(args.data or "fashion-mnist", processor, limit=args.windows)
        result = {"model": args.model, "data": args.data, "images": len(images),
                  "accuracy": tc.eval.accuracy(model, images, batch_size=args.batch_size)}
    print(format_table([result]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def cmd_bench(args: argparse.Namespace) -> None:
    import tcompress as tc

    settings = tc.BenchSettings(batch_sizes=tuple(args.batch_sizes), seqlen=args.seqlen, new_tokens=args.new_tokens,
                                repeats=args.repeats, warmup=args.warmup, engine=args.engine, rounds=args.rounds)
    models = {spec: tc.load(spec)[0] for spec in args.models}
    report = tc.bench(models, settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report.to_json(out / "bench.json")
    report.plot(out / "bench.png")
    print(report.facts_table() + "\n\n" + report.table())
    print(f"\nwrote {out / 'bench.json'} and {out / 'bench.png'}")


def cmd_quantize(args: argparse.Namespace) -> None:
    compress_and_report(args, method_from_flags(args, QUANTIZE_FIELDS))


def cmd_prune(args: argparse.Namespace) -> None:
    if args.structured:
        compress_and_report(args, structured_method(args))
        return
    args.method = args.method or "sparsegpt"
    compress_and_report(args, method_from_flags(args, PRUNE_FIELDS))


def structured_method(args: argparse.Namespace):
    from tcompress.prune import Structured

    unstructured = [flag for field, flag in PRUNE_FIELDS.items() if hasattr(args, field)]
    if unstructured or args.method is not None:
        raise ValueError(f"--structured does not take {', '.join(unstructured) or '--method'} "
                         f"(it removes heads, channels and blocks)")
    parts = tuple(part for part in ("heads", "channels", "blocks") if getattr(args, part)) or ("heads", "channels")
    return Structured(target_params=args.target_params, parts=parts, remove_heads=args.remove_heads,
                      remove_channels=args.remove_channels, remove_blocks=args.remove_blocks)


def compress_and_report(args: argparse.Namespace, method) -> None:
    """Load, apply `method`, save to --out; print size, time and (with --eval) perplexity
    before and after."""
    import time

    import tcompress as tc
    from tcompress.eval.latency import tensor_bytes
    from tcompress.report import format_table

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; expected a folder")
    model, tok = tc.load(args.model)
    calib = (tc.data.calibration(args.calib, tok, n=args.calib_samples, seqlen=args.calib_seqlen, seed=args.seed)
             if method.needs_data else None)
    rows = [{"model": "float", "MB in memory": tensor_bytes(model) / 2**20}]
    if args.eval:
        windows = tc.data.windows(args.eval, tok, seqlen=args.eval_seqlen, limit=args.eval_windows)
        rows[0]["perplexity"] = tc.eval.perplexity(model, tok, windows, seqlen=args.eval_seqlen)
    start = time.perf_counter()
    tc.apply(model, method, calib)
    seconds = time.perf_counter() - start
    tc.save(model, out)
    disk = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    rows.append({"model": method_label(method),
                 "MB in memory": tensor_bytes(model) / 2**20, "MB on disk": disk / 2**20, "seconds": seconds})
    if args.eval:
        rows[1]["perplexity"] = tc.eval.perplexity(model, tok, windows, seqlen=args.eval_seqlen)
    print(format_table([{key: row.get(key) for key in rows[1]} for row in rows]))
    print(f"\nwrote {out}")


QUANTIZE_FIELDS = {  # config field -> the flag that sets it; a flag not given leaves the method's default
    "bits": "--bits", "group_size": "--group-size", "symmetric": "--symmetric", "search": "--search",
    "head": "--head", "alpha": "--alpha", "activations": "--weight-only", "threshold": "--threshold",
}


PRUNE_FIELDS = {"sparsity": "--sparsity", "pattern": "--pattern", "bits": "--bits", "group_size": "--group-size"}


def method_from_flags(args: argparse.Namespace, flags: dict[str, str]):
    """The method config from the flags given; a flag the method has no field for is refused."""
    import dataclasses

    from tcompress.methods import METHODS, method_from

    given = {field: getattr(args, field) for field in flags if hasattr(args, field)}
    fields = {f.name for f in dataclasses.fields(METHODS[args.method])}
    foreign = [flags[field] for field in given if field not in fields]
    if foreign:
        own = sorted(flag for field, flag in flags.items() if field in fields)
        raise ValueError(f"{', '.join(foreign)} does not apply to --method {args.method} (its options: {', '.join(own)})")
    return method_from({"method": args.method, **given})


def method_label(method) -> str:
    """E.g. `gptq W4 g64`, `smoothquant W8A8 alpha=0.5`, `wanda 2:4`, `sparsegpt 50% W4 g64`."""
    fields = method.to_dict()
    label = [method.name]
    if "sparsity" in fields:
        label.append(fields["pattern"] or f"{method.sparsity_of(''):.0%}")
    if fields.get("target_params") is not None:
        label.append(f"{fields['target_params']:.0%} params, {'+'.join(fields['parts'])}")
    if fields.get("bits") is not None:
        label.append(f"W{fields['bits']} g{fields['group_size'] or 'channel'}")
    if "activations" in fields:
        label.append("W8A8" if fields["activations"] else "W8")
    label += [f"{key}={fields[key]}" for key in ("alpha", "threshold") if key in fields]
    return " ".join(label)


def cmd_run(args: argparse.Namespace) -> None:
    import tcompress as tc

    recipe = tc.recipe.load(args.recipe)  # every stage validated before the model loads
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; expected a folder")
    model, tok = tc.load(args.model)
    recipe.run(model, tok)
    tc.save(model, out)
    print(f"applied {', '.join(stage.name for stage in recipe.stages)}; wrote {out}")


def cmd_generate(args: argparse.Namespace) -> None:
    import time

    import torch
    from tokenizers import Tokenizer

    from tcompress.eval.latency import PeakMemory
    from tcompress.runtime import Decoder, load_for_decoding

    folder = Path(args.model)
    if not (folder / "tokenizer.json").is_file():
        raise ValueError(f"MODEL {args.model!r}: expected a saved model folder with tokenizer.json")
    with PeakMemory(torch.device("cpu")) as memory:
        model = load_for_decoding(folder)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        prompt = tokenizer.encode(args.prompt).ids
        if not prompt:
            raise ValueError("--prompt: the text encodes to no tokens")
        decoder = Decoder(model, max_length=len(prompt) + args.max_new_tokens)
        stop = getattr(model.config, "eos_token_id", None)
        stop = set(stop if isinstance(stop, list) else [stop])
        start = time.perf_counter()
        token = int(decoder.prefill(torch.tensor([prompt])).argmax(-1))
        prefilled = time.perf_counter()
        new, shown = [token], ""
        while token not in stop and len(new) < args.max_new_tokens:
            shown = _show(tokenizer.decode(new), shown)
            token = int(decoder.step(torch.tensor([token])).argmax(-1))
            new.append(token)
        done = time.perf_counter()
    _show(tokenizer.decode(new[:-1] if token in stop else new), shown, final=True)
    print()
    if args.stats:
        steps = len(new) - 1
        print(f"prompt {len(prompt)} tokens in {prefilled - start:.2f} s; {steps} decode steps at "
              f"{steps / max(done - prefilled, 1e-9):.1f} tokens/s; peak RSS {memory.peak / 2**20:.0f} MB",
              file=sys.stderr)


def _show(text: str, shown: str, final: bool = False) -> str:
    """Print what `text` adds to what was printed: whole characters only, until the `final` text."""
    if text.startswith(shown) and (final or not text.endswith("\ufffd")):
        print(text[len(shown):], end="", flush=True)
        return text
    return shown


def cmd_train_vit(args: argparse.Namespace) -> None:
    import tcompress as tc
    from tcompress.models.vit_fmnist import (check_distillation, check_widening, load_teacher, save_teacher,
                                             train_cnn_teacher, train_vit_fmnist)

    try:
        check_distillation(args.distillation, args.temperature, args.ema)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if args.intermediate_size is not None:
        if args.start is None:
            raise SystemExit("error: --intermediate-size widens a trained model: give --start too")
        try:
            check_widening(tc.load(args.start)[0], args.intermediate_size)  # before the teacher's training
        except ValueError as error:
            raise SystemExit(f"error: --intermediate-size: {error}") from None
    if args.save_teacher and args.teacher != "cnn":
        raise SystemExit("error: --save-teacher saves the CNN that --teacher cnn trains")
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
            raise SystemExit(f"error: --teacher: {error}") from None
    result = train_vit_fmnist(args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                              augmented=args.augmented, start=args.start, teacher=teacher,
                              distillation=args.distillation, temperature=args.temperature, ema=args.ema,
                              intermediate_size=args.intermediate_size)
    print(f"test accuracy {result['accuracy']:.4f} after {args.epochs} epochs in {result['seconds']:.0f} s; "
          f"wrote {args.out}")


def _group_size(text: str) -> int | None:
    return None if text == "channel" else _positive(text)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_calibration_and_output(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--calib", default="pydoc", help="calibration text: corpus name or file (default pydoc)")
    parser.add_argument("--calib-samples", type=_positive, default=128, help="default 128")
    parser.add_argument("--calib-seqlen", type=_positive, default=512, help="default 512")
    parser.add_argument("--seed", type=int, default=0, help="calibration sampling seed (default 0)")
    add_eval_and_output(parser, what, "also print perplexity before and after on DATA")


def add_eval_and_output(parser: argparse.ArgumentParser, what: str, eval_help: str) -> None:
    parser.add_argument("--eval", metavar="DATA", help=eval_help)
    parser.add_argument("--eval-windows", type=_positive, default=16, help="default 16")
    parser.add_argument("--eval-seqlen", type=_positive, default=2048, help="default 2048")
    parser.add_argument("--out", required=True, help=f"folder to save the {what} model to")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcompress", description="Make transformer models smaller and faster, and measure what it cost.",
        epilog=EPILOG)
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="architecture, parameters and bytes by module kind", epilog=EPILOG)
    info.add_argument("model", metavar="MODEL")
    info.set_defaults(run=cmd_info)

    evaluate = commands.add_parser(
        "eval", help="perplexity (LMs), STS-B Spearman (encoders) or accuracy (image classifiers)", epilog=EPILOG)
    evaluate.add_argument("model", metavar="MODEL")
    evaluate.add_argument("--data", help="pydoc, wikitext2, c4, ptb or a text file (LMs); an STS-B .tsv "
                          "(encoders); fashion-mnist, mnist or an image folder (image classifiers)")
    evaluate.add_argument("--seqlen", type=_positive, default=2048, help="tokens per window (default 2048)")
    evaluate.add_argument("--windows", type=_positive, help="use only the first N windows (images: first N)")
    evaluate.add_argument("--batch-size", type=_positive, default=1, help="windows or images per forward")
    evaluate.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    evaluate.set_defaults(run=cmd_eval)

    bench = commands.add_parser("bench", help="latency, throughput and memory at several batch sizes",
                                epilog=EPILOG + " Several models are measured in one run and plotted together.")
    bench.add_argument("models", nargs="+", metavar="MODEL")
    bench.add_argument("--batch-sizes", type=_int_list, default=[1, 2, 4, 8, 16], help="default 1,2,4,8,16")
    bench.add_argument("--seqlen", type=_positive, default=128, help="prompt / sequence length (default 128)")
    bench.add_argument("--new-tokens", type=_positive, default=32, help="decode steps per run (default 32)")
    bench.add_argument("--repeats", type=_positive, default=5, help="timed runs; the median is reported")
    bench.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    bench.add_argument("--rounds", type=_positive, default=1,
                       help="measure every model this many times in turn and keep the median round (default 1; "
                       "3 or more on a shared machine)")
    bench.add_argument("--engine", choices=("auto", "hf", "tcompress"), default="auto",
                       help="LM decoding: tcompress's static-cache decoder (Llama family), the model's own "
                       "forward and cache (hf), or auto: the decoder where it applies (default)")
    bench.add_argument("--out", default="runs/bench", help="folder for bench.json and bench.png")
    bench.set_defaults(run=cmd_bench)

    quantize = commands.add_parser(
        "quantize", help="quantize weights (packed int storage) and save the model",
        epilog=EPILOG + " Options a method does not have are refused; those not given take the method's default.")
    quantize.add_argument("model", metavar="MODEL")
    quantize.add_argument("--method", default="gptq", choices=["rtn", "gptq", "awq", "hqq", "smoothquant", "outliers"],
                          help="default gptq; awq = activation-aware scales and clipping, then RTN; "
                          "hqq = RTN with HQQ-optimised zeros, no data; smoothquant = W8A8 "
                          "(int8 weights and activations) after moving activation outliers into the weights; "
                          "outliers = RTN with the input channels of large activations kept in fp16")
    weights = quantize.add_argument_group("weight grid (rtn, gptq, awq, hqq, outliers)")
    weights.add_argument("--bits", type=int, default=argparse.SUPPRESS,
                         help="2, 3, 4 or 8 (default 4; outliers: 8)")
    weights.add_argument("--group-size", type=_group_size, default=argparse.SUPPRESS,
                         help="input channels per scale, or 'channel' for per-channel (default 64; outliers: channel)")
    weights.add_argument("--symmetric", action="store_true", default=argparse.SUPPRESS,
                         help="symmetric grid (default asymmetric)")
    weights.add_argument("--search", choices=["minmax", "mse", "hqq"], default=argparse.SUPPRESS,
                         help="each group's grid: min-max (default), clipping search, or HQQ zero optimisation")
    weights.add_argument("--head", action="store_true", default=argparse.SUPPRESS,
                         help="also quantize the output head (lm_head; untied from the embeddings if tied); "
                         "default: left in float (rtn, gptq, hqq, outliers)")
    smooth = quantize.add_argument_group("smoothquant")
    smooth.add_argument("--alpha", type=float, default=argparse.SUPPRESS,
                        help="share of the activations' range moved into the weights, in [0, 1] (default 0.5)")
    smooth.add_argument("--weight-only", dest="activations", action="store_const", const=False,
                        default=argparse.SUPPRESS, help="int8 weights only; activations stay float (default W8A8)")
    kept = quantize.add_argument_group("outliers")
    kept.add_argument("--threshold", type=float, default=argparse.SUPPRESS,
                      help="input channels whose calibration activations exceed this magnitude stay in fp16 "
                      "(default 6.0)")
    add_calibration_and_output(quantize, "quantized")
    quantize.set_defaults(run=cmd_quantize)

    prune = commands.add_parser(
        "prune", help="prune weights (unstructured or N:M; stored sparse) and save the model",
        epilog=EPILOG + " Options a method does not have are refused; those not given take the method's default.")
    prune.add_argument("model", metavar="MODEL")
    prune.add_argument("--method", choices=["sparsegpt", "wanda", "magnitude"],
                       help="unstructured / N:M pruning: sparsegpt (default; OBS updates of the kept weights), "
                       "wanda (|w| times input norm, no update) or magnitude (|w|, no data)")
    prune.add_argument("--sparsity", type=float, default=argparse.SUPPRESS,
                       help="share of each linear's weights set to zero, in [0, 1) (default 0.5)")
    prune.add_argument("--pattern", metavar="N:M", default=argparse.SUPPRESS,
                       help="N kept weights in every M consecutive inputs, e.g. 2:4 (instead of --sparsity)")
    joint = prune.add_argument_group("joint sparsify-and-quantize (sparsegpt)")
    joint.add_argument("--bits", type=int, default=argparse.SUPPRESS, help="also quantize the kept weights: 2, 3, 4 or 8")
    joint.add_argument("--group-size", type=_group_size, default=argparse.SUPPRESS,
                       help="with --bits: input channels per scale, or 'channel' (default 64)")
    shape = prune.add_argument_group("structured: a smaller dense model that plain transformers loads")
    shape.add_argument("--structured", action="store_true", help="remove heads, FFN channels and/or blocks")
    shape.add_argument("--target-params", type=float, help="share of the parameters to keep, e.g. 0.75")
    shape.add_argument("--heads", action="store_true", help="may remove attention heads (GQA-aware)")
    shape.add_argument("--channels", action="store_true", help="may remove FFN channels")
    shape.add_argument("--blocks", action="store_true", help="may remove whole blocks "
                       "(none of the three given: heads and channels)")
    shape.add_argument("--remove-heads", type=int, default=0, metavar="N", help="query heads per block, instead of a target")
    shape.add_argument("--remove-channels", type=int, default=0, metavar="N", help="FFN channels per block")
    shape.add_argument("--remove-blocks", type=int, default=0, metavar="N", help="whole blocks")
    add_calibration_and_output(prune, "pruned")
    prune.set_defaults(run=cmd_prune)

    run = commands.add_parser("run", help="apply a YAML recipe (a list of method stages) and save the model",
                              epilog=EPILOG + " A recipe: {calibration: {source: pydoc, n: 128, seqlen: 512, "
                              "seed: 0}, stages: [{method: gptq, bits: 4, group_size: 64}]}.")
    run.add_argument("recipe", metavar="RECIPE", help="YAML file")
    run.add_argument("model", metavar="MODEL")
    run.add_argument("--out", required=True, help="folder to save the compressed model to")
    run.set_defaults(run=cmd_run)

    from tcompress.distill.cli import add_commands

    add_commands(commands, EPILOG, _positive)

    from tcompress.export.cli import add_command

    add_command(commands, EPILOG)

    generate = commands.add_parser(
        "generate", help="greedy text continuation through the lean decoder (no transformers model code)",
        description="Continue --prompt greedily with tcompress's decoder, on the model loaded by "
        "tc.runtime.load_for_decoding: a Llama-family folder (packed by tcompress or float), its "
        "tokenizer.json read by the tokenizers library.")
    generate.add_argument("model", metavar="DIR", help="a saved model folder with tokenizer.json")
    generate.add_argument("--prompt", required=True, help="text to continue")
    generate.add_argument("--max-new-tokens", type=_positive, default=64, help="default 64")
    generate.add_argument("--stats", action="store_true", help="print prefill time, decode tokens/s and peak RSS")
    generate.set_defaults(run=cmd_generate)

    train_vit = commands.add_parser(
        "train-vit", help="train the vit-fmnist model (the offline vision subject) from scratch",
        epilog="The recipe that made the weights shipped as `vit-fmnist`; Fashion-MNIST comes from "
        "$TCOMPRESS_DATA/fashion-mnist or Debian's dataset-fashion-mnist.")
    train_vit.add_argument("--out", required=True, help="folder to save the trained model to")
    train_vit.add_argument("--epochs", type=_positive, default=8, help="default 8")
    train_vit.add_argument("--batch-size", type=_positive, default=128, help="default 128")
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
    train_vit.add_argument("--teacher-epochs", type=_positive, default=10, help="with --teacher cnn (default 10)")
    train_vit.add_argument("--save-teacher", metavar="FILE", help="with --teacher cnn: save the trained CNN here "
                           "(safetensors) for later cycles")
    train_vit.add_argument("--intermediate-size", type=_positive, metavar="N",
                           help="with --start: first widen every MLP to N channels, keeping what the model computes")
    train_vit.add_argument("--seed", type=int, default=0, help="default 0")
    train_vit.set_defaults(run=cmd_train_vit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"tcompress {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

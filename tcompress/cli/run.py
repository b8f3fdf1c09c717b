"""`tcompress run`: apply a YAML recipe (a list of method stages) and save the model."""

from __future__ import annotations

import argparse

from tcompress.checkpoint.load import load
from tcompress.checkpoint.save import save
from tcompress.cli.common import EPILOG, out_folder
from tcompress.recipe import load as load_recipe


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("run", help="apply a YAML recipe (a list of method stages) and save the model",
                                 epilog=EPILOG + " A recipe: {calibration: {source: pydoc, n: 128, seqlen: 512, "
                                 "seed: 0}, stages: [{method: gptq, bits: 4, group_size: 64}]}.")
    parser.add_argument("recipe", metavar="RECIPE", help="YAML file")
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("--out", required=True, help="folder to save the compressed model to")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    recipe = load_recipe(args.recipe)  # every stage validated before the model loads
    out = out_folder(args.out)
    model, tok = load(args.model)
    recipe.run(model, tok)
    save(model, out)
    print(f"applied {', '.join(stage.name for stage in recipe.stages)}; wrote {out}")

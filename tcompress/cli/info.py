"""`tcompress info`: architecture, parameters and bytes by module kind."""

from __future__ import annotations

import argparse

from tcompress.checkpoint.load import load
from tcompress.cli.common import EPILOG
from tcompress.core.sizes import parameters_by_kind
from tcompress.eval.harness import model_kind
from tcompress.models.adapters import adapter
from tcompress.report import format_table


def add(commands: argparse._SubParsersAction) -> None:
    info = commands.add_parser("info", help="architecture, parameters and bytes by module kind", epilog=EPILOG)
    info.add_argument("model", metavar="MODEL")
    info.add_argument("--verify", action="store_true", help="first check every file of a saved folder against the "
                      "sha256 tc.save recorded in its tcompress.json")
    info.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    model, _ = load(args.model, verify=args.verify)
    parts = adapter(model)
    by_kind = parameters_by_kind(model)
    total_params = sum(count for count, _ in by_kind.values())
    print(f"model        {args.model}")
    print(f"architecture {type(model).__name__} ({model_kind(model)}; family: {parts.name})")
    print(f"blocks       {len(parts.block_list())}")
    print(f"hidden size  {parts.hidden_size}; heads {parts.num_heads}, KV heads {parts.num_kv_heads}, "
          f"head dim {parts.head_dim}")
    print(f"parameters   {total_params:,} ({total_params / 1e6:.1f}M)\n")
    rows = [{"kind": kind, "parameters": count, "MB": size / 2**20, "share": f"{100 * count / max(total_params, 1):.2f}%"}
            for kind, (count, size) in sorted(by_kind.items(), key=lambda kv: -kv[1][1])]
    print(format_table(rows))
    if args.verify:
        print(f"\nverified: every file matches the sha256 in {args.model}/tcompress.json")

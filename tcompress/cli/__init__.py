"""`tcompress ...`: a thin command line over the Python API, one module a command group, the
method commands built from the method registry."""

from __future__ import annotations

import argparse
import logging
import sys

from tcompress.cli import bench, compress, distill, evaluate, export, generate, info, run, train_vit
from tcompress.cli.common import EPILOG

COMMANDS = (info, evaluate, bench, compress, run, distill, export, generate, train_vit)  # in `--help` order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcompress", description="Make transformer models smaller and faster, and measure what it cost.",
        epilog=EPILOG)
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add(commands)
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

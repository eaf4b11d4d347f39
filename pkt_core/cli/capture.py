"""``pkt capture``: record layer activations of a model on a data set (single process or torchrun)."""

from __future__ import annotations

import argparse
import os

from pkt_core.cli.arguments import parse_layer_list


def command_capture(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pkt_core.capture.dataset import capture_texts
    from pkt_core.capture.hooks import CaptureOptions
    from pkt_core.capture.prompt_sources import load_prompts
    from pkt_core.models.loading import load_model

    from pkt_core.models.placement import distributed_local_device

    # Under torchrun, auto / cuda mean this rank's own GPU (made current), not a shard over all.
    device = distributed_local_device(args.device)
    rank, world_size, local_rank = _init_distributed_if_launched(device)
    if world_size > 1 and device.startswith("cuda"):
        import torch

        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
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


def add_capture_parser(commands) -> None:
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
    capture.add_argument("--dtype", default="fp32",
                         help="precision policy: fp32, bf16, fp16 (fp32 weights, autocast), auto, bf16-weights, "
                              "fp16-weights")
    capture.add_argument("--store-dtype", default="fp32", help="fp32, bf16 or fp16 for the stored activations")
    capture.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (sharded over all GPUs)")
    capture.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")
    capture.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    capture.add_argument("--verbose-ranks", action="store_true", help="show a progress bar on every rank")
    capture.set_defaults(func=command_capture)

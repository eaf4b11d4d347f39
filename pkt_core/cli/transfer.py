"""``pkt transfer``: run SemAlign or a peer method headless, with a progress bar, resumable."""

from __future__ import annotations

import argparse

from pkt_core.errors import PktError
from pkt_core.models.precision import POLICY_NAMES
from pkt_core.transfer.config import LOSSES, MAPPINGS, METHODS, VARIANTS


def _parse_losses(items: list[str] | None) -> dict[str, float]:
    losses: dict[str, float] = {}
    for item in items or []:
        name, _, weight = item.partition("=")
        try:
            losses[name] = float(weight) if weight else 1.0
        except ValueError:
            raise PktError(f"cannot read loss {item!r}; write NAME=WEIGHT, e.g. layer_cosine=1.0") from None
    return losses


TRAINING_LABELS = ("seeking", "laten")


def is_training_step(stage: str) -> bool:
    """Whether a progress report comes from an optimizer step (else from a set-up stage starting)."""
    return stage.startswith("stage ") or stage in TRAINING_LABELS


def add_transfer_parser(commands) -> None:
    variants = "; ".join(f"{name}: {preset['paper_version']}" for name, preset in VARIANTS.items())
    parser = commands.add_parser(
        "transfer",
        help="run a knowledge transfer from a source to a target model and write the run",
        description=(
            "SemAlign (arXiv 2510.24208). Variants: " + variants + ". The frontier schedule "
            "(one stage per target layer, shallow to deep) is reconstructed from the v2 abstract. "
            "Every run folder records which parts are v1 and which are reconstructed. "
            "Peer methods on the same data, seeds and run format (--method): seeking (Seeking Neural "
            "Nuggets, Zhong et al. ICLR 2024), laten (LaTen, Tan et al. ACL 2025), and the controls kd "
            "(output KL to the source) and finetune (answer cross-entropy), which train with SemAlign's "
            "own budget: the same frontier stages, steps per stage, trainable set and learning rate."
        ),
    )
    who = parser.add_argument_group("models (a registered pair, or --source and --target)")
    who.add_argument("--pair", help="registered pair, e.g. qwen-coder-1.5b-to-0.5b")
    who.add_argument("--source", help="source model: registered name, folder, .gguf or hub id")
    who.add_argument("--target", help="target model: registered name, folder, .gguf or hub id")
    parser.add_argument("--method", default="semalign", choices=list(METHODS), help="transfer method")
    parser.add_argument("--variant", choices=list(VARIANTS),
                        help="SemAlign variant (loss and map preset; default v1); not for the peer methods")
    data = parser.add_argument_group("data (one of)")
    data.add_argument("--task", help="task whose non-evaluation split gives the alignment samples: mmlu (dev + "
                                     "validation), arc_easy / arc_challenge (validation, in the cloze form the "
                                     "evaluation scores), gsm8k, mbpp, humaneval (reserved slices)")
    data.add_argument("--data", help="JSON lines with prompt and answer (your own alignment data)")
    parser.add_argument("--out", help="run folder (default $PKT_HOME/runs/<time>-<method>-<variant>-<task>)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last finished stage")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run at --out")
    hyper = parser.add_argument_group("hyper-parameters")
    hyper.add_argument("--align-samples", type=int, default=32)
    hyper.add_argument("--probe-samples", type=int, default=48, help="held-out prompts for CKA and projections")
    hyper.add_argument("--probe-items", type=int, default=300,
                       help="labelled evaluation items of the layer-wise linear probe (choice tasks; 0: off)")
    hyper.add_argument("--steps", type=int, default=2, help="optimizer steps per stage (semalign, kd, finetune)")
    hyper.add_argument("--batch-size", type=int, help="default 8; laten 16 (the paper's examples per step)")
    hyper.add_argument("--lr", type=float, help="default 3e-5 (the paper's v1); seeking 3e-4 (the paper's); laten 1e-3")
    hyper.add_argument("--max-tokens", type=int, default=256)
    hyper.add_argument("--trainable", choices=["block", "lora"], default="block", help="full frontier block or LoRA r")
    hyper.add_argument("--lora-rank", type=int, default=16, help="LoRA rank (seeking: also the SVD rank)")
    hyper.add_argument("--loss", action="append", metavar="NAME=WEIGHT",
                       help=f"override the variant's losses (repeatable): {', '.join(LOSSES)}")
    hyper.add_argument("--mapping", choices=list(MAPPINGS), help="override the variant's layer map")
    hyper.add_argument("--layer-site", choices=["contribution", "block_output"], default="contribution")
    hyper.add_argument("--no-final-norm", action="store_true", help="do not apply the final norm before decomposition")
    hyper.add_argument("--keep-first-position", action="store_true", help="keep position 0 in the layer losses")
    hyper.add_argument("--stages", help="target layers to train, e.g. 0-5 (default all)")
    hyper.add_argument("--seed", type=int, default=0)
    hyper.add_argument("--allow-shared-subset", action="store_true",
                       help="semalign with two different tokenizers: bases on the shared token strings, alignment "
                            "per sequence (pooled states, anchor at the last prompt token); this project's extension")
    hyper.add_argument("--fidelity", action=argparse.BooleanOptionalAction, default=None,
                       help="decomposition-fidelity table (default: on for semalign, off for the peers)")
    hyper.add_argument("--fidelity-scope", choices=["sample", "full"], default="sample",
                       help="sample (default): 256 probe tokens per model (seeded) at 8 layers spread over depth; "
                            "full: every CKA probe row at every layer (the manifest records which)")
    hyper.add_argument("--similarity", dest="similarity_measures",
                       help="comma list of the CKA / CCA measures computed on the probes for every view (default: "
                            "all of linear_cka, linear_cka_unbiased, rbf_cka, svcca, pwcca, mean_cca, "
                            "procrustes, mutual_knn; linear_cka is always needed: the layer maps read it)")
    peers = parser.add_argument_group("peer methods (seeking, laten)")
    peers.add_argument("--epochs", type=int, help="passes over the alignment samples (default 3)")
    peers.add_argument("--seed-samples", type=int, default=32,
                       help="seeking: alignment samples whose source sensitivity picks layers and sub-blocks")
    peers.add_argument("--lora-dropout", type=float, default=0.05, help="seeking: LoRA dropout")
    peers.add_argument("--laten-layers", type=int, default=4,
                       help="laten: attention and FFN modules kept per model, paired by rank")
    peers.add_argument("--neuron-fraction", type=float, default=0.1, help="laten: top neurons kept per module")
    peers.add_argument("--hypernet-hidden", type=int, default=64, help="laten: hypernetwork hidden width")
    evaluation = parser.add_argument_group("evaluation (source, target before and after, item by item)")
    evaluation.add_argument(
        "--eval", dest="eval_tasks", metavar="SPEC[,SPEC...]",
        help="comma list of evaluations, each task[:mc|:rc][+circular][@N]: a task (mmlu, arc_easy, arc_challenge, "
             "gsm8k, humaneval, mbpp) scored with the run-wide --eval-formulation / --eval-circular (else its "
             "default: MMLU letters, ARC cloze); :mc (letters) or :rc (cloze) and +circular (CircularEval, letters) "
             "ask that formulation instead; @N replaces --eval-limit for that evaluation. One task may appear "
             "several times, e.g. --eval mmlu,mmlu:rc@1,arc_easy: each is stored in evaluation/<key>/ with key "
             "the task for a plain spec, else task-formulation[-circular] (mmlu-rc)")
    evaluation.add_argument("--eval-limit", type=int,
                            help="fixed subset: first N items per evaluation (MMLU: per subject), unless its spec "
                                 "says @N; default all items")
    from pkt_core.cli.evaluate import add_eval_option_flags

    add_eval_option_flags(evaluation, prefix="eval-")
    place = parser.add_argument_group("placement")
    place.add_argument("--dtype", default="fp32", choices=list(POLICY_NAMES),
                       help="precision: fp32; bf16 / fp16 (fp32 master weights, autocast matmuls, fp32 losses; "
                            "fp16 with a gradient scaler); auto (bf16 where the device multiplies bf16 natively, "
                            "else fp32; the manifest records the choice); bf16-weights / fp16-weights (weights "
                            "stored in the low dtype)"),
    place.add_argument("--device", default="cpu", help="both models: cpu, cuda:N or auto")
    place.add_argument("--source-device", help="source only (e.g. cuda:1 to spread the pair over two GPUs)")
    place.add_argument("--target-device", help="target only")
    parser.set_defaults(func=run_transfer_command)


def run_transfer_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pkt_core.cli.arguments import parse_layer_list
    from pkt_core.cli.evaluate import eval_settings_from_args
    from pkt_core.models.registry import get_pair_spec
    from pkt_core.transfer.config import TransferConfig
    from pkt_core.transfer.pipeline import default_run_folder, run_transfer

    source, target = args.source, args.target
    if args.pair:
        if source or target:
            raise PktError("give either --pair or --source/--target, not both")
        pair = get_pair_spec(args.pair)
        source, target = pair.source, pair.target
    if not source or not target:
        raise PktError("name the models: --pair NAME, or both --source and --target")
    stages = parse_layer_list(args.stages) if args.stages else None
    config = TransferConfig(
        source=source, target=target, pair=args.pair, method=args.method, variant=args.variant or "",
        task=args.task, data_file=args.data, align_samples=args.align_samples, probe_samples=args.probe_samples,
        steps_per_stage=args.steps, batch_size=args.batch_size, learning_rate=args.lr, max_tokens=args.max_tokens,
        trainable=args.trainable, lora_rank=args.lora_rank, losses=_parse_losses(args.loss),
        mapping=args.mapping or "", layer_site=args.layer_site, apply_final_norm=not args.no_final_norm,
        drop_first_position=not args.keep_first_position, stages=list(stages) if stages else None,
        seed=args.seed, dtype=args.dtype, source_device=args.source_device or args.device,
        target_device=args.target_device or args.device,
        eval_tasks=args.eval_tasks.split(",") if args.eval_tasks else [], eval_limit=args.eval_limit,
        eval_settings=eval_settings_from_args(args, prefix="eval-").as_dict(),
        fidelity=args.fidelity, epochs=args.epochs, seeking_seed_samples=args.seed_samples,
        fidelity_scope=args.fidelity_scope,
        **({"similarity_measures": args.similarity_measures.split(",")} if args.similarity_measures else {}),
        seeking_lora_dropout=args.lora_dropout, laten_top_layers=args.laten_layers,
        laten_neuron_fraction=args.neuron_fraction, laten_hidden_size=args.hypernet_hidden,
        allow_shared_subset=args.allow_shared_subset, linear_probe_items=args.probe_items,
    )
    out = args.out or default_run_folder(config)
    bar = tqdm(desc=args.method, unit="step")

    def progress(stage: str, step: int, loss: float) -> None:
        bar.set_description(stage)
        # A training step is told by its label ("stage k", "seeking", "laten"), not by its loss:
        # set-up stages report NaN, and a training step's NaN must show as NaN.
        if is_training_step(stage):
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")

    try:
        folder = run_transfer(config, out_dir=out, resume=args.resume, overwrite=args.overwrite, on_progress=progress)
    except KeyboardInterrupt:
        bar.close()
        print(f"cancelled; the partial run is kept at {out}.partial: continue it with the same command and --resume")
        raise
    bar.close()
    from pkt_core.runs.reader import open_run

    print(f"run complete: {folder} ({open_run(folder).manifest.wall_seconds:.0f} s)")
    return 0

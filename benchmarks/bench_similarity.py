"""Benchmark: the full L_a x L_b linear-CKA layer matrix (issue 3), not a test.

Times, on the same float32 arrays (25 layers of width 896 against 29 of width 1536, like
the real pair, n = 1024 rows by default):

* ``pkt``: :func:`pkt_core.similarity.linear_cka_matrix` (biased and unbiased);
* ``ckatorch``: ckatorch 1.0.3 ``cka_base`` looping over all pairs (skipped with a message
  if the package is not importable; ``pip install --no-deps ckatorch==1.0.3`` plus
  matplotlib and seaborn, which its ``__init__`` imports);
* ``floor``: the float64 BLAS work any Gram-form method must do, measured in the same
  run: one ``X X'`` per layer (NumPy calls SYRK for it) on arrays already converted to
  float64 and centred, plus the one ``L_a x n^2 x L_b`` GEMM.

It prints both ratios (goal: ckatorch / pkt >= 40, pkt / floor <= 1.5), then the memory the
full-batch path would need at n = 8192 and the peak the minibatch path actually used
(traced NumPy allocations), which depends on the batch size and not on n.

Run: ``python benchmarks/bench_similarity.py`` (about 3-4 minutes on 2 cores, most of it
ckatorch; ``--ckatorch-pairs 50`` times a subset and extrapolates, and says so).
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from pkt_core.similarity import MinibatchCKA, linear_cka_matrix

GIB = 2**30


def best_time(function: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def make_layers(rng: np.random.Generator, n: int, count: int, width: int) -> list[np.ndarray]:
    # A shared low-rank signal plus noise, so the matrix is not trivially ~0 (timing does not care).
    signal = rng.standard_normal((n, 32), dtype=np.float32)
    return [
        signal @ rng.standard_normal((32, width), dtype=np.float32) + rng.standard_normal((n, width), dtype=np.float32)
        for _ in range(count)
    ]


def gemm_floor(layers_a: list[np.ndarray], layers_b: list[np.ndarray]) -> Callable[[], np.ndarray]:
    """The float64 GEMM work alone, on inputs prepared outside the timed region."""
    n = layers_a[0].shape[0]
    centred_a = [(x.astype(np.float64) - x.astype(np.float64).mean(0)) for x in layers_a]
    centred_b = [(x.astype(np.float64) - x.astype(np.float64).mean(0)) for x in layers_b]

    def run() -> np.ndarray:
        # The outputs are allocated here, as any method must: first-touching 400 MiB is part of the work.
        stack_a = np.empty((len(layers_a), n * n))
        stack_b = np.empty((len(layers_b), n * n))
        for i, x in enumerate(centred_a):
            np.matmul(x, x.T, out=stack_a[i].reshape(n, n))
        for j, x in enumerate(centred_b):
            np.matmul(x, x.T, out=stack_b[j].reshape(n, n))
        return stack_a @ stack_b.T

    return run


def time_ckatorch(layers_a: list[np.ndarray], layers_b: list[np.ndarray], pairs: int | None):
    os.environ.setdefault("MPLBACKEND", "Agg")  # ckatorch imports matplotlib at import time
    try:
        import torch
        from ckatorch import cka_base
    except ImportError as error:
        print(f"ckatorch: SKIPPED, not importable ({error}); pip install --no-deps ckatorch==1.0.3 "
              "and its import-time deps matplotlib, seaborn")
        return None
    tensors_a = [torch.from_numpy(x) for x in layers_a]
    tensors_b = [torch.from_numpy(x) for x in layers_b]
    all_pairs = [(i, j) for i in range(len(layers_a)) for j in range(len(layers_b))]
    chosen = all_pairs if pairs is None or pairs >= len(all_pairs) else all_pairs[:: len(all_pairs) // pairs][:pairs]
    values = {}
    start = time.perf_counter()
    with torch.no_grad():
        for i, j in chosen:
            values[(i, j)] = float(cka_base(tensors_a[i], tensors_b[j]))
    elapsed = time.perf_counter() - start
    total = elapsed * len(all_pairs) / len(chosen)
    return total, elapsed, len(chosen), len(all_pairs), values


def minibatch_peak(n: int, batch_rows: int, args: argparse.Namespace) -> tuple[float, float]:
    """Peak traced bytes (batch inputs included) and seconds spent in ``update`` (making the
    random batches excluded) of the minibatch path over n rows, batches made on the fly."""
    rng = np.random.default_rng(1)
    accumulator = MinibatchCKA(args.layers_a, args.layers_b)
    gc.collect()
    tracemalloc.start()
    elapsed = 0.0
    for _ in range(n // batch_rows):
        batch_a = make_layers(rng, batch_rows, args.layers_a, args.width_a)
        batch_b = make_layers(rng, batch_rows, args.layers_b, args.width_b)
        start = time.perf_counter()
        accumulator.update(batch_a, batch_b)
        elapsed += time.perf_counter() - start
        del batch_a, batch_b
    accumulator.result()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--layers-a", type=int, default=25)
    parser.add_argument("--width-a", type=int, default=896)
    parser.add_argument("--layers-b", type=int, default=29)
    parser.add_argument("--width-b", type=int, default=1536)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ckatorch-pairs", type=int, default=None, help="time only this many pairs and extrapolate")
    parser.add_argument("--skip-ckatorch", action="store_true")
    parser.add_argument("--memory-n", type=int, default=8192)
    parser.add_argument("--batch-rows", type=int, default=1024)
    args = parser.parse_args()

    import torch  # only to report its thread count next to NumPy's BLAS

    print(f"cpus: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, numpy {np.__version__}")
    rng = np.random.default_rng(0)
    layers_a = make_layers(rng, args.n, args.layers_a, args.width_a)
    layers_b = make_layers(rng, args.n, args.layers_b, args.width_b)
    pairs = args.layers_a * args.layers_b
    print(f"matrix: {args.layers_a} x {args.layers_b} layers (widths {args.width_a}, {args.width_b}), "
          f"n = {args.n} rows, float32 inputs")

    # Interleaved repeats, best of each: on a shared machine the load changes between them.
    floor = gemm_floor(layers_a, layers_b)
    floor_s = ours_s = unbiased_s = float("inf")
    for _ in range(args.repeats):
        floor_s = min(floor_s, best_time(floor, 1)[0])
        seconds, ours = best_time(lambda: linear_cka_matrix(layers_a, layers_b), 1)
        ours_s = min(ours_s, seconds)
        unbiased_s = min(unbiased_s, best_time(
            lambda: linear_cka_matrix(layers_a, layers_b, estimator="unbiased"), 1)[0])
    print(f"floor   (float64 SYRK per layer + one GEMM): {floor_s:8.2f} s")
    print(f"pkt     linear CKA, biased   ({ours.form} form): {ours_s:8.2f} s")
    print(f"pkt     linear CKA, unbiased ({ours.form} form): {unbiased_s:8.2f} s")

    ckatorch = None if args.skip_ckatorch else time_ckatorch(layers_a, layers_b, args.ckatorch_pairs)
    if ckatorch is not None:
        total, elapsed, timed, _, values = ckatorch
        how = "measured" if timed == pairs else f"extrapolated from {timed} pairs timed in {elapsed:.1f} s"
        print(f"ckatorch cka_base over {pairs} pairs: {total:8.2f} s ({how})")
        difference = max(abs(values[(i, j)] - ours.values[i, j]) for i, j in values)
        print(f"ckatorch vs pkt: max |difference| = {difference:.2e}")
        print(f"RATIO ckatorch / pkt = {total / ours_s:6.1f}x   (goal >= 40)")
    print(f"RATIO pkt / floor    = {ours_s / floor_s:6.2f}x   (goal <= 1.5)")

    n_big, b = args.memory_n, args.batch_rows
    full_gram = (args.layers_a + args.layers_b) * n_big * n_big * 8
    data = n_big * (args.layers_a * args.width_a + args.layers_b * args.width_b) * 4
    batch_gram = (args.layers_a + args.layers_b) * b * b * 8
    print(f"\nmemory at n = {n_big}:")
    print(f"  inputs themselves (float32):                       {data / GIB:6.2f} GiB")
    print(f"  full-batch Gram form, all stacked Gram matrices:   {full_gram / GIB:6.2f} GiB "
          "(the full-batch engine row-blocks this into its 1 GiB budget)")
    print(f"  minibatch path, stacked Gram matrices of a batch:  {batch_gram / GIB:6.2f} GiB, whatever n is")
    for n_rows in sorted({2 * b, n_big}):
        peak, seconds = minibatch_peak(n_rows, b, args)
        print(f"  minibatch path, n = {n_rows:5d}, batches of {b}: peak traced {peak / GIB:5.2f} GiB "
              f"(batch inputs included), {seconds:5.1f} s in update()")


if __name__ == "__main__":
    main()

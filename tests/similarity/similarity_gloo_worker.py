"""One rank of the distributed MinibatchCKA test (run as a script by test_similarity_minibatch.py).

Usage: python similarity_gloo_worker.py RANK WORLD_SIZE INIT_FILE DATA_FILE OUT_FILE
Rank r feeds batches r, r + world, r + 2 world, ...; after the all-reduce rank 0 saves the result.
"""

from __future__ import annotations

import sys

import numpy as np
import torch.distributed as dist

from pkt_core.similarity import MinibatchCKA


def main(rank: int, world_size: int, init_file: str, data_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    data = np.load(data_file)
    layers_a, layers_b, batch = data["layers_a"], data["layers_b"], int(data["batch_rows"])
    n_batches = layers_a[0].shape[0] // batch
    accumulator = MinibatchCKA(len(layers_a), len(layers_b))
    for k in range(rank, n_batches, world_size):
        rows = slice(k * batch, (k + 1) * batch)
        accumulator.update([x[rows] for x in layers_a], [y[rows] for y in layers_b])
    reduced_over = accumulator.all_reduce()
    if rank == 0:
        result = accumulator.result()
        np.savez(out_file, values=result.values, n_batches=accumulator.n_batches, n_rows=accumulator.n_rows,
                 world=reduced_over)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])

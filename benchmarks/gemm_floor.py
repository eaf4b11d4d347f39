"""This machine's GEMM rate per dtype on the matmuls a frontier stage runs: the floor its stages
are measured against (a stage cannot multiply faster than its GEMMs alone).

For every Linear layer (in -> out) of a decoder block and t token rows, the three products
training runs, in the layouts torch uses: forward ``x (t x in) @ W^T``, input gradient
``g (t x out) @ W`` and weight gradient ``g^T (out x t) @ x``, with W stored (out x in) as in
``nn.Linear``. Each is timed alone (best of ``repeats`` after a warm-up); the floor is their
FLOPs over their best times summed, weighted by how often the block runs each shape.
Attention products (about 2 % of a 0.5B block's FLOPs at 200 tokens) are left out.

    python benchmarks/gemm_floor.py [--tokens 1600] [--dtypes fp32,bf16] [--repeats 5]

Default shapes: the real target's (Qwen2.5-Coder-0.5B) block: q and o 896 -> 896, k and v
896 -> 128, gate and up 896 -> 4864, down 4864 -> 896.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QWEN_05B_LINEARS = ((896, 896), (896, 128), (896, 128), (896, 896), (896, 4864), (896, 4864), (4864, 896))


@dataclass(frozen=True)
class Gemm:
    """``(m x k) @ (k x n)``; ``kind`` says which product of a Linear layer it is."""

    m: int
    k: int
    n: int
    kind: str  # forward | input-grad | weight-grad

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n

    def label(self) -> str:
        return f"{self.kind:<11} ({self.m} x {self.k}) @ ({self.k} x {self.n})"


@dataclass(frozen=True)
class GemmFloor:
    dtype: str
    tokens: int
    per_shape: tuple[tuple[Gemm, int, float], ...]  # (gemm, times per block, best seconds)

    @property
    def gflops(self) -> float:
        """FLOPs over time of the block's whole GEMM mix, each shape at its best."""
        flops = sum(gemm.flops * count for gemm, count, _ in self.per_shape)
        seconds = sum(best * count for _, count, best in self.per_shape)
        return flops / seconds / 1e9

    def lines(self) -> list[str]:
        return [f"  {gemm.label():<46} x{count}  {gemm.flops / best / 1e9:8.1f} GFLOP/s"
                for gemm, count, best in self.per_shape]


def block_gemms(linears: Sequence[tuple[int, int]], tokens: int) -> Counter[Gemm]:
    """The products one training step runs per Linear (in, out) of a block, with their multiplicity."""
    gemms: Counter[Gemm] = Counter()
    for inputs, outputs in linears:
        gemms[Gemm(tokens, inputs, outputs, "forward")] += 1
        gemms[Gemm(tokens, outputs, inputs, "input-grad")] += 1
        gemms[Gemm(outputs, tokens, inputs, "weight-grad")] += 1
    return gemms


def _operands(gemm: Gemm, dtype: torch.dtype, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Operands in the layout the training step hands to the GEMM (transposed views where it does)."""
    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dtype)

    if gemm.kind == "forward":  # x @ W.T, W stored (out x in)
        return random(gemm.m, gemm.k), random(gemm.n, gemm.k).t()
    if gemm.kind == "input-grad":  # g @ W, W stored (out x in)
        return random(gemm.m, gemm.k), random(gemm.k, gemm.n)
    return random(gemm.k, gemm.m).t(), random(gemm.k, gemm.n)  # g.T @ x


def time_gemm(gemm: Gemm, dtype: torch.dtype, repeats: int) -> float:
    """Best seconds of one product over ``repeats`` runs (after one warm-up), into a preallocated output."""
    a, b = _operands(gemm, dtype, torch.Generator().manual_seed(0))
    out = torch.empty(gemm.m, gemm.n, dtype=dtype)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - started)
    return best


def measure_floor(linears: Sequence[tuple[int, int]], tokens: int, dtype: str, repeats: int = 5) -> GemmFloor:
    """The GEMM floor of ``dtype`` (fp32, bf16, fp16) for a block of ``linears`` at ``tokens`` rows."""
    if dtype not in DTYPES:
        raise SystemExit(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    with torch.no_grad():
        rows = tuple((gemm, count, time_gemm(gemm, DTYPES[dtype], repeats))
                     for gemm, count in block_gemms(linears, tokens).items())
    return GemmFloor(dtype, tokens, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1600, help="token rows per product (batch x padded length)")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"GEMM floor, Qwen2.5-Coder-0.5B block shapes, {args.tokens} token rows, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    for dtype in args.dtypes.split(","):
        floor = measure_floor(QWEN_05B_LINEARS, args.tokens, dtype, args.repeats)
        print(f"{dtype}: {floor.gflops:.1f} GFLOP/s over the block's mix")
        print("\n".join(floor.lines()))


if __name__ == "__main__":
    main()

"""Model FLOP utilisation: the model's training FLOPs per second over the machine's peak.

The peak is measured, not looked up: the best float32 matrix-multiply rate NumPy's
BLAS reaches on large square matrices, with the same thread count the frameworks
get. Run it as its own process so the thread variables are read before NumPy loads:

    OMP_NUM_THREADS=2 python -m benchmarks.mfu --threads 2
    {"peak_flops": 1.1e+11, "size": 1024, "repeats": 10, ...}
    OMP_NUM_THREADS=2 python -m benchmarks.mfu --threads 2 --dtype bf16
    {"peak_flops": 2.4e+11, "dtype": "bf16", "library": "torch 2.13.0+cpu", ...}

The bf16 peak, for the rows that train in bf16-mixed, is PyTorch's bfloat16 matmul
(oneDNN on the CPU: AMX where the CPU has it, else AVX512-BF16, else a conversion to
float32) on the same matrices, bf16 operands and result: NumPy has no bf16 GEMM. On the
Zen 4 CPU (AVX512-BF16, no AMX), 2 threads, machine loaded, PyTorch's bf16 product ran at
2.5x its own float32 one (117 against 46 GFLOP/s, 1024²).

The benchmark measures it right before and right after every framework's run, so
it must be short: 1024² matrices, best of 10, one to two seconds with the process
start-up on a 2-core CPU (where one 2048² product alone takes 70 ms to 0.5 s). Two
peaks that disagree say the machine's speed changed during the run.

A framework's rate counts only the model's matrix products
(`ModelConfig.flops_per_char`, 2 FLOPs per multiply-add) and takes training as
three times the forward pass, the usual estimate (forward, plus two products in
the backward pass), so MFU compares frameworks on the same arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

TRAIN_FLOPS_FACTOR = 3  # training step = forward + backward (two products per forward one)
PEAK_SIZE, PEAK_REPEATS = 1024, 10  # the default measurement: short, since it runs 2x per run


def train_flops_per_step(flops_per_char: float, chars_per_batch: int) -> float:
    """Model FLOPs of one training step: 3 x forward FLOPs per character x characters."""
    return TRAIN_FLOPS_FACTOR * flops_per_char * chars_per_batch


def mfu(flops_per_char: float | None, chars_per_batch: int | None, step_s: float | None,
        peak_flops: float | None) -> float | None:
    """Fraction of `peak_flops` that one training step of `step_s` seconds achieves."""
    if not (flops_per_char and chars_per_batch and step_s and peak_flops):
        return None
    return train_flops_per_step(flops_per_char, chars_per_batch) / step_s / peak_flops


def measure_peak(size: int = PEAK_SIZE, repeats: int = PEAK_REPEATS) -> dict:
    """Best float32 (size x size) @ (size x size) rate of NumPy here, in FLOP/s.

    The first product warms up the BLAS thread pool and is not counted; the best
    of `repeats` timed products is the peak (the least disturbed by other work).
    """
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty((size, size), np.float32)
    np.matmul(a, b, out=out)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    flops = 2.0 * size ** 3
    return {"peak_flops": flops / min(times), "size": size, "repeats": repeats,
            "times_s": times, "numpy": np.__version__, "blas": _blas_name(np)}


def measure_bf16_peak(size: int = PEAK_SIZE, repeats: int = PEAK_REPEATS,
                      threads: int | None = None) -> dict:
    """Best bfloat16 (size x size) @ (size x size) rate of PyTorch here, in FLOP/s, measured
    as measure_peak is; with the ATen CPU capability PyTorch dispatched to ("AVX512") and,
    right after, PyTorch's own float32 rate on the same matrices (torch_fp32_flops: the
    bf16 gain within one library, where the float32 peak is NumPy's BLAS)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in "ab")

    def times_of(dtype) -> list[float]:
        x, y = a.to(dtype), b.to(dtype)
        out = torch.empty(size, size, dtype=dtype)
        torch.matmul(x, y, out=out)  # warm-up: oneDNN builds its kernel here
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(x, y, out=out)
            times.append(time.perf_counter() - start)
        return times
    times, fp32 = times_of(torch.bfloat16), times_of(torch.float32)
    flops = 2.0 * size ** 3
    return {"peak_flops": flops / min(times), "size": size, "repeats": repeats,
            "times_s": times, "dtype": "bf16", "library": f"torch {torch.__version__}",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_fp32_flops": flops / min(fp32)}


def _blas_name(np) -> str | None:
    """The BLAS NumPy was built against ("scipy-openblas 0.3.29"), if NumPy says."""
    try:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{info.get('name')} {info.get('version', '')}".strip()
    except Exception:  # older NumPy: no dict mode; the name is only decoration
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="threads (also set OMP/MKL/OpenBLAS variables before starting)")
    parser.add_argument("--size", type=int, default=PEAK_SIZE, help="square matrix size")
    parser.add_argument("--repeats", type=int, default=PEAK_REPEATS,
                        help="timed products; the best counts")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="fp32: NumPy's float32 GEMM; bf16: PyTorch's bfloat16 one")
    args = parser.parse_args(argv)
    if args.threads and "numpy" in sys.modules:
        print("warning: NumPy was loaded before the thread variables were set",
              file=sys.stderr)
    result = (measure_peak(args.size, args.repeats) if args.dtype == "fp32"
              else measure_bf16_peak(args.size, args.repeats, args.threads))
    result["threads"] = args.threads
    result["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

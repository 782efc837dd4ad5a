"""Thread counts: the variables libraries read at load, and the runtime calls after it.

Standard library only. `--threads N` reaches a framework in two ways:
`thread_env` (applied by `common.bootstrap` before anything is imported, and by the
benchmark runner to every child), and, for the runtimes that also take a call,
`set_tf_threads` (TensorFlow and Keras on it) and `limit_xla_threads` (JAX and Keras
on it). The framework module is passed in, so common/ never imports it.
"""

from __future__ import annotations

import os
import sys

# The commands that step one character at a time (generation), where a pool of threads
# around every small op costs more than the op: MXNet and TensorFlow run them on one.
ONE_STEP_COMMANDS = ("generate", "repl")


def thread_env(threads: int | None) -> dict[str, str]:
    """The OpenMP/MKL/BLAS/framework variables that pin thread pools to `threads`."""
    if not threads:
        return {}
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
            "MXNET_CPU_WORKER_NTHREADS": n, "TF_NUM_INTRAOP_THREADS": n,
            "TF_NUM_INTEROP_THREADS": "1"}


def threads_from_argv(argv: list[str]) -> int | None:
    """The value of --threads N / --threads=N in `argv`, if any and valid."""
    for i, arg in enumerate(argv):
        value = None
        if arg == "--threads" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--threads="):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                return int(value) if int(value) > 0 else None
            except ValueError:
                return None  # the parser reports it properly later
    return None


def one_step_command(argv: list[str] | None = None) -> bool:
    """Whether this process runs one of ONE_STEP_COMMANDS (`argv`: sys.argv[1:])."""
    argv = sys.argv[1:] if argv is None else argv
    return bool(argv) and argv[0] in ONE_STEP_COMMANDS


def set_tf_threads(tf, threads: int | None) -> None:
    """TensorFlow's intra-op pool to `threads`, one inter-op thread (one op at a time is
    what a small recurrent step needs). Too late once the runtime has started; the
    TF_NUM_*_THREADS variables of `thread_env` then already said the same.

    A one-step command gets one intra-op thread whatever `threads` says: generating one
    stream of 1,024 characters on the quiet 2-core machine, taking turns, ran at
    3,832-4,191 chars/s with one thread against 2,709-3,398 with two (tensorflow;
    keras[tensorflow] 3,993-4,035 against 2,854-3,299), and 64 streams no slower."""
    if one_step_command():
        threads = 1
    if not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


def limit_xla_threads(threads: int | None, backend_started: bool, local_rank: int = 0) -> None:
    """Pin XLA's CPU thread pools to `threads` cores; only possible before its backend starts.

    This XLA has no thread-count flag (`intra_op_parallelism_threads` is refused as an
    unknown flag, which aborts the process). It sizes its pools from the CPU affinity
    mask, so restrict that; with one thread also turn Eigen's threading off. A
    data-parallel rank takes the `local_rank`-th group of `threads` cores, so that the
    ranks on one machine do not share a core (all on the first one ran 0.7x as fast as
    one process).
    """
    if not threads or backend_started:
        return
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false").strip()
    cpus = sorted(os.sched_getaffinity(0))
    if threads < len(cpus):
        first = local_rank * threads
        # threads started later inherit it
        os.sched_setaffinity(0, [cpus[(first + k) % len(cpus)] for k in range(threads)])

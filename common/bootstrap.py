"""What must happen before a framework is imported: the right environment, thread pools.

Standard library only: it runs at the top of every framework file, before
NumPy or the framework loads. OpenMP, MKL and MXNet read their thread
variables once, at load time, so `--threads` has to be applied here.

    from common.bootstrap import early_setup
    early_setup("legacy", "chainer")   # may re-execute under .venv-legacy
    import chainer
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Which virtual environment holds which frameworks (see README, "Two environments").
VENVS = {"modern": ROOT / ".venv", "legacy": ROOT / ".venv-legacy"}


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


def ensure_environment(env: str, module: str) -> None:
    """Re-execute this script under `.venv`/`.venv-legacy` when `module` is missing here.

    So `python chainer_model.py train` works from the modern environment (or any
    Python): the same command shape for every framework. Does nothing when the
    framework imports here, or when that environment is not set up (the import
    then fails with a message saying how to set it up).
    """
    if importlib.util.find_spec(module) is not None:
        return
    python = VENVS[env] / "bin" / "python"
    if not python.exists() or os.environ.get("CHARRNN_REEXEC") == "1":
        return
    # Both venvs' bin/python link to the same base interpreter, so compare environments
    # (sys.prefix), not executables.
    if Path(sys.prefix).resolve() == VENVS[env].resolve():
        return
    os.environ["CHARRNN_REEXEC"] = "1"  # never loop
    os.execv(str(python), [str(python), *sys.argv])


# Frameworks whose native libraries print banners on stderr at import, below Python
# (TensorFlow's oneDNN notice ignores TF_CPP_MIN_LOG_LEVEL): imported with fd 2 muted.
QUIET_IMPORTS = ("tensorflow", "keras")


def early_setup(env: str, module: str) -> None:
    """Pick the environment that has `module`, then apply --threads to the variables
    libraries read at load."""
    ensure_environment(env, module)
    for key, value in thread_env(threads_from_argv(sys.argv[1:])).items():
        os.environ[key] = value
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    if module in QUIET_IMPORTS:
        _quiet_import(module)


def _quiet_import(module: str) -> None:
    """Import `module` with file descriptor 2 pointed at /dev/null.

    A failure is swallowed here: the framework file imports the module again right
    after, and that import raises the error with stderr intact.
    """
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - reported by the real import that follows
        pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def require(module: str, env: str):
    """Import `module`, or exit with one line saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        sys.exit(f"error: cannot import {module} ({exc}); run `make setup` "
                 f"to create {VENVS[env].name}, or use {VENVS[env].name}/bin/python")

"""What must happen before a framework is imported: the right environment, thread pools.

Standard library only: it runs at the top of every framework file, before
NumPy or the framework loads. OpenMP, MKL and MXNet read their thread
variables once, at load time, so `--threads` has to be applied here.

    from common.bootstrap import early_setup
    early_setup(__file__)   # chainer_model.py: may re-execute under .venv-legacy
    import chainer

The environment and the library that tells whether it is present come from the
framework's entry in `common.registry`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from common.paths import venv_python
from common.registry import entry_of_module
from common.threads import thread_env, threads_from_argv


def ensure_environment(env: str, module: str) -> None:
    """Re-execute this script under environment `env` when `module` is missing here.

    So `python chainer_model.py train` works from the modern environment (or any
    Python): the same command shape for every framework. Does nothing when the
    framework imports here, or when that environment is not set up (the import
    then fails with a message saying how to set it up).
    """
    if importlib.util.find_spec(module) is not None:
        return
    python = venv_python(env)
    if not python.exists() or os.environ.get("CHARRNN_REEXEC") == "1":
        return
    # Both venvs' bin/python link to the same base interpreter, so compare environments
    # (sys.prefix), not executables.
    if Path(sys.prefix).resolve() == python.parent.parent.resolve():
        return
    os.environ["CHARRNN_REEXEC"] = "1"  # never loop
    os.execv(str(python), [str(python), *sys.argv])


# Frameworks whose native libraries print banners on stderr at import, below Python
# (TensorFlow's oneDNN notice ignores TF_CPP_MIN_LOG_LEVEL): imported with fd 2 muted.
QUIET_IMPORTS = ("tensorflow", "keras")


def early_setup(script: str) -> None:
    """For framework file `script` (pass `__file__`): pick the environment that has its
    library, then apply --threads to the variables libraries read at load."""
    entry = entry_of_module(Path(script).stem)
    env, module = entry.env, entry.requires
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
    except Exception:  # reported by the real import that follows
        pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


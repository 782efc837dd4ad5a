"""What must happen before a framework is imported: the right environment, thread pools.

Standard library only: it runs at the top of every framework file, before
NumPy or the framework loads. OpenMP, MKL and MXNet read their thread
variables once, at load time, so `--threads` has to be applied here.

    from charrnn.common.bootstrap import run_script
    run_script("chainer_model")   # chainer_model.py: may re-execute under .venv-legacy

The framework modules themselves (charrnn/frameworks/) do nothing at import, so the
Python API and the tests import them like any module; the entry points (the
`<framework>_model.py` scripts, the `charrnn` command) call `early_setup` first.

The environment and the library that tells whether it is present come from the
framework's entry in `common.registry`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from charrnn.common.paths import ROOT, venv_python
from charrnn.common.registry import entry_of_module, quiet_import
from charrnn.common.threads import thread_env, threads_from_argv


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
    # This checkout's package, whichever way it was started (the `charrnn` command of an
    # editable install lives in another environment's bin/).
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    # The command line as typed (a script, `-m charrnn`, or the `charrnn` command's file).
    os.execv(str(python), [str(python), *sys.orig_argv[1:]])


def require_environment(env: str, module: str, hint: str) -> None:
    """For a tool run as a command (`python -m benchmarks.plot`): re-execute under
    environment `env` when `module` is missing here, as the framework scripts do; where
    no environment has it, say so in one line (`hint`: how to install it) and exit 2."""
    ensure_environment(env, module)
    if importlib.util.find_spec(module) is None:
        print(f"error: {module} is not installed in this Python ({sys.executable}): {hint}",
              file=sys.stderr)
        sys.exit(2)


def early_setup(module: str) -> None:
    """For framework module `module` ("chainer_model"): pick the environment that has
    its library, then apply --threads to the variables libraries read at load."""
    entry = entry_of_module(module)
    env, module = entry.env, entry.requires
    ensure_environment(env, module)
    for key, value in thread_env(threads_from_argv(sys.argv[1:])).items():
        os.environ[key] = value
    quiet_import(module)


def run_script(module: str) -> None:
    """The command line of framework module `module` ("numpy_model"), as its script in
    the repository root runs it: set up, import the framework, run argv."""
    early_setup(module)
    from charrnn.common.cli import main
    framework = importlib.import_module(f"charrnn.frameworks.{module}")
    main(framework.MODEL, variants=getattr(framework, "VARIANTS", None))

"""Where things are: the project root, the two environments, and default file locations.

The one place that knows the layout of the checkout; standard library only, so the
bootstrap can use it before NumPy or a framework loads.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from charrnn.common.config import PRETRAINED_MODELS

PACKAGE = Path(__file__).resolve().parent.parent  # charrnn/
ROOT = PACKAGE.parent  # the repository root, in a checkout (or an editable install)
IN_CHECKOUT = (ROOT / "pyproject.toml").is_file() and (ROOT / "numpy_model.py").is_file()


def pretrained_path(name: str) -> Path:
    """The file of the shipped model `name` (`PRETRAINED_MODELS`), package data."""
    return PACKAGE / "pretrained" / PRETRAINED_MODELS[name]


PRETRAINED_PATH = pretrained_path("default")  # what generate falls back to


def work_dir() -> Path:
    """Where default checkpoints, logs and a downloaded corpus go: the repository root
    in a checkout (as the original suite's scripts had it), else the current directory
    (an installed package: site-packages is no place for them)."""
    return ROOT if IN_CHECKOUT else Path.cwd()


def data_dir() -> Path:
    """Where a downloaded corpus is kept (data/, ignored by git)."""
    return work_dir() / "data"


# The virtual environment behind each environment name of the registry. Two are
# unavoidable: Chainer and MXNet need NumPy 1.x, TensorFlow 2.21 needs NumPy >= 1.26.
# A framework registered as "any" (NumPy) runs in either; the modern one is its home.
VENVS = {"modern": ROOT / ".venv", "legacy": ROOT / ".venv-legacy"}
HOME_ENV = {"modern": "modern", "legacy": "legacy", "any": "modern"}


def venv_python(env: str) -> Path:
    """The interpreter of environment `env` ("modern", "legacy", or "any": the modern one)."""
    return VENVS[HOME_ENV[env]] / "bin" / "python"


def env_python(env: str) -> Path:
    """The interpreter that runs environment `env` (the registry's, the benchmark's and the
    tests' one answer): its virtual environment's; for "any" (NumPy runs in both) the
    modern one, or this interpreter where that is missing (an installed package, or a
    checkout before make setup)."""
    python = venv_python(env)
    return python if env != "any" or python.exists() else Path(sys.executable)


def slug(name: str) -> str:
    """A file or directory name for a framework name: "chainer[nstep]" -> "chainer-nstep"."""
    return re.sub(r"[^\w.-]+", "-", name).strip("-")


def default_checkpoint_path(framework: str) -> Path:
    return work_dir() / "checkpoints" / f"{slug(framework)}_model"


def default_log_path(framework: str) -> Path:
    return work_dir() / "logs" / f"{slug(framework)}_model.log"


def default_export_path(checkpoint_path: Path, framework: str,
                        export_format: str = "safetensors") -> Path:
    """`export`'s output beside the checkpoint: <framework>_model.safetensors or .onnx."""
    return Path(checkpoint_path).parent / f"{slug(framework)}_model.{export_format}"

"""Default file locations, one per framework, anchored at the project root."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRETRAINED_PATH = ROOT / "pretrained" / "tinyshakespeare.safetensors"


def default_checkpoint_path(framework: str) -> Path:
    return ROOT / "checkpoints" / f"{framework}_model"


def default_log_path(framework: str) -> Path:
    return ROOT / "logs" / f"{framework}_model.log"


def default_export_path(checkpoint_path: Path, framework: str) -> Path:
    return Path(checkpoint_path).parent / f"{framework}_model.safetensors"

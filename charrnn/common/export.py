"""The `export` command: a checkpoint's native files -> one portable .safetensors file."""

from __future__ import annotations

import sys
from pathlib import Path

from charrnn.common.checkpoint import load_checkpoint, portable_metadata, restore_native
from charrnn.common.config import ExportConfig, OptimConfig
from charrnn.common.framework import CharRNN
from charrnn.common.paths import default_checkpoint_path, default_export_path
from charrnn.common.weights import save_portable


def run_export(model_cls: type[CharRNN], cfg: ExportConfig) -> Path:
    """Rebuild the model from its native checkpoint and write its canonical weights.

    Going through the native files (not copying model.safetensors) is the point:
    it proves the framework's own save/load and its layout conversion agree.
    """
    directory = Path(cfg.checkpoint_path or default_checkpoint_path(model_cls.framework))
    checkpoint = load_checkpoint(directory, model_cls.framework)
    portable = checkpoint.portable
    device = model_cls.setup_device(cfg.device, cfg.threads)
    model = model_cls(portable.config, portable.weights, OptimConfig(), device=device)
    restore_native(model, checkpoint.directory)
    output = Path(cfg.output or default_export_path(directory, model_cls.framework))
    save_portable(output, model.get_weights(), portable.config, portable.vocab,
                  **portable_metadata(model, checkpoint.progress))
    print(f"wrote {output}", file=sys.stderr)
    return output

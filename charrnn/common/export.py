"""The `export` command: a checkpoint's native files -> one portable .safetensors file, or
the two ONNX graphs built from those same portable weights (`common.onnx_export`)."""

from __future__ import annotations

import sys
from pathlib import Path

from charrnn.common.checkpoint import load_checkpoint, portable_metadata, restore_native
from charrnn.common.config import ExportConfig, OptimConfig
from charrnn.common.framework import CharRNN
from charrnn.common.paths import default_checkpoint_path, default_export_path
from charrnn.common.weights import REQUIRED_METADATA, Portable, load_portable, save_portable


def run_export(model_cls: type[CharRNN], cfg: ExportConfig) -> list[Path]:
    """Rebuild the model and write its canonical weights in `cfg.format`; the files written.

    From a checkpoint directory the model is rebuilt from its native files (not by
    copying model.safetensors): that proves the framework's own save/load and its layout
    conversion agree. From a portable file (any framework's), it is built from that
    file. Either way the framework's canonical weights are what is written, so every
    framework's model exports the same way.
    """
    given = Path(cfg.checkpoint_path or default_checkpoint_path(model_cls.framework))
    output = Path(cfg.output or default_export_path(given, model_cls.framework, cfg.format))
    if cfg.format == "onnx":  # before any model is built: a missing onnx is one line at once
        from charrnn.common.onnx_export import check_output, require_onnx
        require_onnx()
        check_output(output)
    device = model_cls.setup_device(cfg.device, cfg.threads)
    if given.is_file():
        source = load_portable(given)
        model = model_cls(source.config, source.weights, OptimConfig(), device=device)
        metadata = {k: v for k, v in source.metadata.items() if k not in REQUIRED_METADATA}
    else:
        checkpoint = load_checkpoint(given, model_cls.framework)
        source = checkpoint.portable
        model = model_cls(source.config, source.weights, OptimConfig(), device=device)
        restore_native(model, checkpoint.directory)
        metadata = portable_metadata(model, checkpoint.progress)
    portable = Portable(model.get_weights(), source.config, source.vocab, metadata)
    if cfg.format == "onnx":
        from charrnn.common.onnx_export import export_onnx
        written = list(export_onnx(output, portable))
    else:
        save_portable(output, portable.weights, portable.config, portable.vocab, **metadata)
        written = [output]
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return written

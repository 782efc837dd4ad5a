"""The shipped models are what their metadata says: each one's validation loss, recomputed
from the file on the split it was trained on, is the one it reports; and the targets a
shipped model was trained for (issue 30: the large model's 1.47 nats, and 1.60 from the
zero state in 200-character windows) hold. One pass over tinyshakespeare's last 10%.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from charrnn.common.batching import Batches, split_ids
from charrnn.common.config import PRETRAINED_MODELS, OptimConfig
from charrnn.common.paths import pretrained_path
from charrnn.common.text import default_corpus_path, read_text
from charrnn.common.train import evaluate, window_loss
from charrnn.common.weights import load_portable

# What each shipped model was trained to reach: (val loss, zero-state 200-char windows).
TARGETS = {"default": (None, None), "large": (1.47, 1.60)}
# The recomputed val loss against the metadata's, recomputed in the run's own precision
# by the framework that trained it: exact up to float32 summation for fp32; bf16-mixed
# products accumulate in another order with other thread counts (1.41961 in the metadata
# of the large model, 1.41966 recomputed in float32).
AGREEMENT = {"fp32": 1e-4, "bf16-mixed": 1e-3}


@pytest.mark.parametrize("name", list(PRETRAINED_MODELS))
def test_shipped_model_reaches_its_reported_val_loss(name):
    path = pretrained_path(name)
    portable = load_portable(path)
    header = json.loads(path.with_suffix(".jsonl").read_text().splitlines()[0])
    run = header["train_config"]
    try:
        text = read_text(default_corpus_path())
    except Exception as exc:  # no corpus and no network: nothing to recompute on
        pytest.skip(f"tinyshakespeare is not available ({exc})")
    _, val_ids = split_ids(portable.vocab.encode(text), run["val_fraction"])
    # PyTorch: a large model in seconds (the modern environment; the reference agrees with
    # it, test_conformance and test_generation).
    pytest.importorskip("torch")
    from charrnn.frameworks.pytorch_model import TorchCharRNN as model_cls
    # In the run's precision: the large model's bf16-mixed pass takes a third of the time.
    precision = run.get("precision", "fp32")
    model = model_cls(portable.config, portable.weights, OptimConfig(precision=precision),
                      device=model_cls.setup_device("cpu", None))
    val_loss = evaluate(model, Batches(val_ids, run["batch_size"], run["seq_len"]))
    reported = float(portable.metadata["val_loss"])
    assert val_loss == pytest.approx(reported, abs=AGREEMENT[precision])
    best, windows = TARGETS[name]
    if best is not None:
        assert val_loss <= best
    if windows is not None:
        zero_state = window_loss(model, val_ids, 200)
        assert zero_state <= windows, f"{zero_state:.4f} from zeros in 200-char windows"
    assert np.isfinite(val_loss)

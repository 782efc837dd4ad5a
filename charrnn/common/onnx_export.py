"""ONNX export from the portable weights: one exporter for every framework (docs/ONNX.md).

    python pytorch_model.py export --format onnx --output model.onnx
    # -> model.onnx (the sequence graph, for scoring text) and model.step.onnx (one step,
    #    for generation), each carrying the vocabulary and the model config

A framework's `export` rebuilds its model, takes its canonical weights
(`common.weights`) and hands them here, so every framework's model exports the same
way. The graphs use ONNX's own `LSTM`, `GRU` and `RNN` operators (opset `OPSET`);
the canonical gate orders are reordered into ONNX's at this edge and nowhere else.
`onnx` is imported only when a graph is built and `onnxruntime` only when one is run,
so `common/` keeps to the standard library, NumPy and safetensors at import.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.common.config import ModelConfig
from charrnn.common.errors import CharRnnError
from charrnn.common.fileio import atomic_path, write_failure
from charrnn.common.framework import NumpyState
from charrnn.common.text import Vocab
from charrnn.common.weights import REQUIRED_METADATA, Portable, check_weights

# Opset 21 (ONNX 1.16, IR version 10): its LSTM, GRU and RNN (version 14) are the ones every
# onnxruntime since 1.18 runs; nothing here needs a newer operator.
OPSET, IR_VERSION = 21, 10
FORMAT = "char-rnn-onnx/1"  # metadata_props "format"
STEP_SUFFIX = ".step.onnx"  # model.onnx (sequence) -> model.step.onnx (step)
INSTALL_HINT = "export --format onnx needs the onnx package: pip install 'char-rnn-bench[onnx]'"
RUN_HINT = "running an ONNX export needs onnxruntime: pip install 'char-rnn-bench[onnx]'"

# Where each ONNX gate block comes from in the canonical kernels (docs/SPEC.md sections 5
# and 8), in H-row blocks. LSTM: canonical i, f, g, o -> ONNX i, o, f, c (c is g).
# GRU: canonical r, z, n -> ONNX z, r, h (h is n), and PyTorch's n, with r applied to
# (W_hn h + b_hn), is ONNX's linear_before_reset=1. RNN: one block.
ONNX_GATES = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn": (0,)}


def step_path(path: str | os.PathLike) -> Path:
    """The step graph's file beside the sequence graph `path`: model.onnx -> model.step.onnx."""
    path = Path(path)
    return path.with_name(path.name[:-len(".onnx")] + STEP_SUFFIX)


def state_names(config: ModelConfig) -> tuple[str, ...]:
    """The graphs' state inputs: ("h", "c") for an LSTM, ("h",) for a GRU or RNN (the
    suite's all-zero c of those cells, docs/SPEC.md section 10, is not carried)."""
    return ("h", "c") if config.cell == "lstm" else ("h",)


def require_onnx():
    """The `onnx` module, or one line saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise CharRnnError(INSTALL_HINT) from None
    return onnx


def check_output(path: str | os.PathLike) -> None:
    """Refuse an output not named NAME.onnx (the step graph's name comes from it)."""
    name = Path(path).name
    if not name.endswith(".onnx") or name.endswith(STEP_SUFFIX):
        raise CharRnnError(f"--output {path}: an ONNX export is named NAME.onnx (the step "
                           f"graph goes beside it as NAME{STEP_SUFFIX})")


# ---------------------------------------------------------------------------------------
# Building the graphs
# ---------------------------------------------------------------------------------------


def onnx_layer_arrays(config: ModelConfig, weights, k: int) -> dict[str, np.ndarray]:
    """Layer k's W (1, G*H, in), R (1, G*H, H) and B (1, 2*G*H) in ONNX's gate order:
    B is the input biases then the recurrent ones; where the suite has one bias, it goes
    in the input half and the recurrent half is zero."""
    H, layer = config.rnn_size, config.layer(k)

    def reorder(a: np.ndarray) -> np.ndarray:  # (G*H, ...) blocks into ONNX's order
        return np.concatenate([a[g * H:(g + 1) * H] for g in ONNX_GATES[config.cell]])

    if config.cell == "gru":
        b_ih, b_hh = weights[f"{layer}.b_ih"], weights[f"{layer}.b_hh"]
    else:
        b_ih = weights[f"{layer}.bias"]
        b_hh = np.zeros_like(b_ih)
    return {"W": reorder(weights[f"{layer}.w_ih"])[None],
            "R": reorder(weights[f"{layer}.w_hh"])[None],
            "B": np.concatenate([reorder(b_ih), reorder(b_hh)])[None]}


def build_graph(portable: Portable, step: bool):
    """The ONNX model of `portable`: the step graph (ids (batch,) -> logits (batch,
    vocab_size)) or the sequence graph (ids (batch, time) -> logits (batch, time,
    vocab_size)); both take and return the states (num_layers, batch, rnn_size)."""
    onnx = require_onnx()
    from onnx import TensorProto, helper, numpy_helper

    config = portable.config
    weights = check_weights(portable.weights, config, "export")
    L, H, V = config.num_layers, config.rnn_size, config.vocab_size
    states = state_names(config)
    nodes, inits = [], []

    def const(name: str, a: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(a), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(nodes)}", **attrs))

    ids_shape = ["batch"] if step else ["batch", "time"]
    state_shape = [L, "batch", H]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ids_shape)]
    inputs += [helper.make_tensor_value_info(s, TensorProto.FLOAT, state_shape) for s in states]

    # The recurrent operators are time-major: X (time, batch, in).
    node("Gather", [const("embedding", weights["embedding"]), "ids"], ["embedded"])
    if step:
        node("Unsqueeze", ["embedded", const("axis0", np.array([0]))], ["x0"])  # (1, B, E)
    else:
        node("Transpose", ["embedded"], ["x0"], perm=[1, 0, 2])  # (T, B, E)
    const("axis1", np.array([1]))
    for s in states:  # each layer's initial state, (1, B, H) = (num_directions, B, H)
        node("Split", [s], [f"{s}{k}" for k in range(L)], axis=0, num_outputs=L)
    x = "x0"
    for k in range(L):
        arrays = {name: const(f"{config.layer(k)}.{name}", a)
                  for name, a in onnx_layer_arrays(config, weights, k).items()}
        op = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[config.cell]
        attrs = {"linear_before_reset": 1} if config.cell == "gru" else {}
        if config.cell == "rnn":
            attrs["activations"] = ["Tanh"]
        # Inputs X, W, R, B, sequence_lens (none: every row runs the whole time), h, c.
        op_inputs = [x, arrays["W"], arrays["R"], arrays["B"], "", f"h{k}"]
        op_outputs = [f"y{k}", f"h_out{k}"]
        if config.cell == "lstm":
            op_inputs.append(f"c{k}")
            op_outputs.append(f"c_out{k}")
        node(op, op_inputs, op_outputs, hidden_size=H, **attrs)
        node("Squeeze", [f"y{k}", "axis1"], [f"x{k + 1}"])  # (T, 1, B, H) -> (T, B, H)
        x = f"x{k + 1}"
    for s in states:
        node("Concat", [f"{s}_out{k}" for k in range(L)], [f"{s}_out"], axis=0)
    dense_b = const("dense.b", weights["dense.b"])
    if step:
        node("Squeeze", [x, "axis0"], ["top"])  # (B, H)
        node("Gemm", ["top", const("dense.w", weights["dense.w"]), dense_b], ["logits"],
             transB=1)  # (B, V)
    else:
        node("Transpose", [x], ["top"], perm=[1, 0, 2])  # (B, T, H)
        # MatMul broadcasts over (B, T); Gemm takes 2-D operands only. dense.w is (V, H).
        node("MatMul", ["top", const("dense.w_t", weights["dense.w"].T)], ["projected"])
        node("Add", ["projected", dense_b], ["logits"])  # (B, T, V)
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [*ids_shape, V])]
    outputs += [helper.make_tensor_value_info(f"{s}_out", TensorProto.FLOAT, state_shape)
                for s in states]
    kind = "step" if step else "sequence"
    graph = helper.make_graph(nodes, f"charrnn_{kind}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="char-rnn-bench", ir_version=IR_VERSION,
                              doc_string=f"char-rnn {config.num_layers} x {config.cell} "
                              f"{H}, {kind} graph (docs/ONNX.md)")
    provenance = {k: "" if v is None else str(v) for k, v in portable.metadata.items()
                  if k not in REQUIRED_METADATA}
    helper.set_model_props(model, {**provenance, "format": FORMAT, "graph": kind,
                                   "config": config.to_json(),
                                   "vocab": json.dumps(portable.vocab.to_list(),
                                                       ensure_ascii=False),
                                   "states": json.dumps(states)})
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(path: str | os.PathLike, portable: Portable) -> tuple[Path, Path]:
    """Write the sequence graph to `path` (NAME.onnx) and the step graph beside it
    (NAME.step.onnx); returns both paths. Both graphs are built before either file is
    written, and a failed write leaves neither file half-written."""
    path = Path(path)
    check_output(path)
    sequence, step = build_graph(portable, step=False), build_graph(portable, step=True)
    target = path
    try:
        with atomic_path(path, suffix=".onnx") as tmp_sequence:
            tmp_sequence.write_bytes(sequence.SerializeToString())
            target = step_path(path)
            with atomic_path(target, suffix=".onnx") as tmp_step:
                tmp_step.write_bytes(step.SerializeToString())
    except OSError as exc:
        raise write_failure(target, exc) from None
    return path, step_path(path)


# ---------------------------------------------------------------------------------------
# Running the step graph in onnxruntime, for `common.generate.Generator`
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxInfo:
    """What an exported graph's metadata_props say: the model and its vocabulary."""

    config: ModelConfig
    vocab: Vocab
    graph: str  # "step" or "sequence"
    states: tuple[str, ...]  # the state inputs, ("h", "c") or ("h",)


def read_metadata(props: dict[str, str], source: str) -> OnnxInfo:
    """An export's metadata_props (onnxruntime's `get_modelmeta().custom_metadata_map`)."""
    if props.get("format") != FORMAT:
        raise CharRnnError(f"{source}: format {props.get('format')!r}, expected {FORMAT!r}")
    return OnnxInfo(ModelConfig.from_json(props["config"]),
                    Vocab.from_list(json.loads(props["vocab"])), props["graph"],
                    tuple(json.loads(props["states"])))


def session(path: str | os.PathLike, threads: int | None = 1, optimization: str = "all"):
    """An onnxruntime CPU InferenceSession of `path` with `threads` intra-op threads
    (None: onnxruntime's own, one a core) and graph optimisation "basic", "extended" or
    "all". The defaults were the fastest for generation (docs/ONNX.md, "Speed"): the
    step's products are small, and a second thread cost more than it saved."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CharRnnError(RUN_HINT) from None
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxStepModel(NumpyState):
    """An exported step graph run by onnxruntime, with the part of the `CharRNN` contract
    that `common.generate.Generator` drives (state, `step`, `steps`), so the shared
    warm-up and sampler give the text any framework gives."""

    framework = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = 1,
                 optimization: str = "all"):
        self.session = session(path, threads, optimization)
        info = read_metadata(self.session.get_modelmeta().custom_metadata_map, str(path))
        if info.graph != "step":
            raise CharRnnError(f"{path}: a {info.graph} graph; generation runs the step graph "
                               f"(NAME{STEP_SUFFIX})")
        self.config, self.vocab, self.states = info.config, info.vocab, info.states
        self.outputs = ["logits", *(f"{s}_out" for s in self.states)]

    def step(self, ids: np.ndarray, state) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """ids (batch,) -> logits (batch, vocab_size) and the new (h, c)."""
        h, c = state
        feeds = {"ids": np.asarray(ids, np.int64), "h": h}
        if "c" in self.states:
            feeds["c"] = c
        logits, h, *rest = self.session.run(self.outputs, feeds)
        return logits, (h, rest[0] if rest else c)

    def steps(self, ids: np.ndarray, state, count: int,
              choose: Callable[[np.ndarray, int], np.ndarray]):
        """`CharRNN.steps`: a Python loop over `step`."""
        for t in range(count):
            logits, state = self.step(ids, state)
            ids = choose(logits, t)
        return state

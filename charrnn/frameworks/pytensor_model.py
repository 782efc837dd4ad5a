"""PyTensor (the maintained successor of Theano): a symbolic graph with `pytensor.scan`,
`pytensor.grad`, and clipping plus the optimiser (Adam, RMSprop or SGD: the formulas of
charrnn.common.optim) as update expressions on shared variables.

    python pytensor_model.py train --num-epochs 1
    python pytensor_model.py generate --seed "KING"

The original CharLSTM was a Theano program; this is the same idea with today's
PyTensor. Parameters live in shared variables in the canonical layout (gate order
i, f, g, o; GRU r, z, n), so nothing is converted at the edge. PyTensor has no fused
recurrent layer: each cell (LSTM, GRU, vanilla RNN) is a scan over its step function.
Batch size and sequence length are symbolic: each function compiles once, on its first
call.
"""


from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.tensor.special import log_softmax

from charrnn.common.checkpoint import load_arrays_and_slots, save_arrays_and_slots
from charrnn.common.config import ModelConfig, OptimConfig
from charrnn.common.framework import CPU, CharRNN, Device, NumpyState, choose_device
from charrnn.common.optim import update
from charrnn.common.weights import Weights

# PyTensor 3's default backend, named so no PYTENSOR_FLAGS changes what is measured. The C
# backend ("cvm") finds no BLAS it can link against in a pip install (NumPy's OpenBLAS
# has renamed symbols), so its matrix products fall back to NumPy through Python; it
# measured ~25% slower per step, and its first compile of the C modules took ~1 minute.
# Numba compiles in ~5 s per process once its on-disk cache (in PyTensor's compiledir)
# is warm, ~35 s the first time.
MODE = "NUMBA"

# ---------------------------------------------------------------------------------------
# Graph. Shapes: B batch_size, T seq_len, E embedding_size, H rnn_size, V vocab_size,
# L num_layers. The layers run time-major, (T, B, ...), so scan walks the first axis.
# ---------------------------------------------------------------------------------------


def lstm_cell(x_proj, h, c, w_hh):
    """One step: x_proj (B, 4H) = x @ w_ih.T + bias, precomputed; h, c (B, H)."""
    H = h.shape[-1]
    z = x_proj + pt.dot(h, w_hh.T)  # (B, 4H)
    i, f = pt.sigmoid(z[:, :H]), pt.sigmoid(z[:, H:2 * H])
    g, o = pt.tanh(z[:, 2 * H:3 * H]), pt.sigmoid(z[:, 3 * H:])
    c = f * c + i * g
    return o * pt.tanh(c), c


def lstm_layer(x, h0, c0, w_ih, w_hh, bias):
    """x (T, B, in) -> outputs (T, B, H), final h and c (B, H)."""
    x_proj = pt.dot(x, w_ih.T) + bias  # every step's input projection at once: (T, B, 4H)
    (hs, cs) = pytensor.scan(lstm_cell, sequences=[x_proj], outputs_info=[h0, c0],
                             non_sequences=[w_hh], strict=True, return_updates=False)
    return hs, hs[-1], cs[-1]


def gru_cell(x_proj, h, w_hh, b_hh):
    """One GRU step (SPEC section 8): x_proj (B, 3H) = x @ w_ih.T + b_ih, precomputed."""
    H = h.shape[-1]
    h_proj = pt.dot(h, w_hh.T) + b_hh  # (B, 3H): r multiplies its n block, bias included
    rz = pt.sigmoid(x_proj[:, :2 * H] + h_proj[:, :2 * H])
    r, z = rz[:, :H], rz[:, H:]
    n = pt.tanh(x_proj[:, 2 * H:] + r * h_proj[:, 2 * H:])
    return (1.0 - z) * n + z * h


def gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh):
    """x (T, B, in) -> outputs (T, B, H) and the final h (B, H); the input projection
    hoisted out of the scan like the LSTM's."""
    x_proj = pt.dot(x, w_ih.T) + b_ih  # (T, B, 3H)
    hs = pytensor.scan(gru_cell, sequences=[x_proj], outputs_info=[h0],
                       non_sequences=[w_hh, b_hh], strict=True, return_updates=False)
    return hs, hs[-1]


def rnn_cell(x_proj, h, w_hh):
    """One vanilla RNN step: x_proj (B, H) = x @ w_ih.T + bias, precomputed."""
    return pt.tanh(x_proj + pt.dot(h, w_hh.T))


def rnn_layer(x, h0, w_ih, w_hh, bias):
    """x (T, B, in) -> outputs (T, B, H) and the final h (B, H)."""
    hs = pytensor.scan(rnn_cell, sequences=[pt.dot(x, w_ih.T) + bias], outputs_info=[h0],
                       non_sequences=[w_hh], strict=True, return_updates=False)
    return hs, hs[-1]


LAYERS = {"gru": gru_layer, "rnn": rnn_layer}  # the cells without a cell state


class Graph:
    """The symbolic model over the shared parameters `p` (canonical names)."""

    def __init__(self, config: ModelConfig, p: dict, rng):
        self.config, self.p, self.rng = config, p, rng

    def dropout(self, a, train: bool, rng):
        """Inverted dropout; threads the random generator: returns (a, next rng)."""
        rate = self.config.drop_rate
        if not train or rate == 0.0:
            return a, rng
        next_rng, u = pt.random.uniform(0.0, 1.0, size=a.shape, rng=rng,
                                        dtype="float32").owner.outputs
        return a * pt.cast(u >= rate, "float32") / np.float32(1.0 - rate), next_rng

    def weights(self, k: int) -> list:
        """Layer k's shared variables in the order its functions take them: w_ih, w_hh,
        then the bias (GRU: b_ih, b_hh)."""
        prefix = self.config.layer(k)
        return [self.p[f"{prefix}.{n}"] for n in ("w_ih", "w_hh", *self.config.bias_names())]

    @staticmethod
    def cell_state(cs: list, c0):
        """The stacked c of the LSTM's layers; GRU and RNN have no cell state, so their
        c comes out as zeros, whatever came in (SPEC section 10)."""
        return pt.stack(cs) if cs else pt.zeros_like(c0)

    def forward(self, x, h0, c0, train: bool):
        """x (B, T) int32, h0 and c0 (L, B, H) -> logits (T, B, V), h, c, next rng."""
        p, rng, cell = self.p, self.rng, self.config.cell
        out, rng = self.dropout(p["embedding"][x.T], train, rng)  # (T, B, E)
        hs, cs = [], []
        for k in range(self.config.num_layers):
            if cell == "lstm":
                out, h, c = lstm_layer(out, h0[k], c0[k], *self.weights(k))
                cs.append(c)
            else:
                out, h = LAYERS[cell](out, h0[k], *self.weights(k))
            out, rng = self.dropout(out, train, rng)  # (T, B, H)
            hs.append(h)
        logits = pt.dot(out, p["dense.w"].T) + p["dense.b"]  # (T, B, V)
        return logits, pt.stack(hs), self.cell_state(cs, c0), rng

    def step(self, ids, h0, c0):
        """ids (B,) -> logits (B, V), h, c: one time step, no scan."""
        p, cell = self.p, self.config.cell
        out, hs, cs = p["embedding"][ids], [], []
        for k in range(self.config.num_layers):
            w_ih, w_hh, *biases = self.weights(k)
            x_proj = pt.dot(out, w_ih.T) + biases[0]
            if cell == "lstm":
                out, c = lstm_cell(x_proj, h0[k], c0[k], w_hh)
                cs.append(c)
            elif cell == "gru":
                out = gru_cell(x_proj, h0[k], w_hh, biases[1])
            else:
                out = rnn_cell(x_proj, h0[k], w_hh)
            hs.append(out)
        return (pt.dot(out, p["dense.w"].T) + p["dense.b"], pt.stack(hs),
                self.cell_state(cs, c0))


def float32(a):
    """A scalar as float32 for the update expressions: a host number as a NumPy constant
    (a Python float would become a float64 constant and widen the graph), a graph
    scalar (the learning rate, a bias correction) cast."""
    return np.float32(a) if isinstance(a, (int, float)) else pt.cast(a, "float32")


def losses_of(logits, y):
    """Per-character cross-entropy (T * B,) float32: logits (T, B, V), y (B, T)."""
    logp = log_softmax(logits, axis=-1).reshape((-1, logits.shape[-1]))
    return -logp[pt.arange(logp.shape[0]), y.T.flatten()]


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class PytensorCharRNN(NumpyState, CharRNN):
    """Each of the train, forward (also used for evaluation), one-step and, for the
    conformance test, gradient functions compiles on its first use; batch size and
    sequence length are symbolic, so none compiles twice (the training loop's
    `first_step_s` includes the train one's compilation).
    """

    framework = "pytensor"
    data_parallel_refusal = ("PyTensor has no collectives across processes (Theano's "
                             "multi-GPU platoon was not carried over)")
    # bf16-mixed: PyTensor 3.0.7's tensor types end at float16 (`pt.matrix(dtype=
    # "bfloat16")`: "TypeError: Invalid dtype: bfloat16"; only its MLX backend, Apple
    # silicon, names a bfloat16), so no product can take bf16 operands. Rounding float32
    # operands to bf16 values inside the graph would emulate the arithmetic, as the NumPy
    # reference does, without a bf16 kernel: not a bf16 path (docs/FRAMEWORKS.md).
    precision_refusal = ("PyTensor 3.0.7 has no bfloat16 dtype (its types end at float16), "
                         "so no product can take bf16 operands")

    def __init__(self, config: ModelConfig, weights: Weights, optim: OptimConfig,
                 device: Device = CPU, seed: int = 0):
        super().__init__(config, weights, optim, device, seed)
        weights = {name: np.array(a, np.float32) for name, a in weights.items()}  # copies
        self.p = {name: pytensor.shared(a, name=name) for name, a in weights.items()}
        # The optimiser's per-parameter state (Adam's m and v, RMSprop's v, SGD's b), zero
        # at the start, and the number of updates made (Adam's bias corrections use it).
        self.slots = {slot: {n: pytensor.shared(np.zeros_like(a), name=f"{slot}.{n}")
                             for n, a in weights.items()} for slot in optim.slots()}
        self.count = pytensor.shared(np.int64(0), name="count")
        # Shared, not a constant of the graph: `set_learning_rate` changes it between steps.
        self.lr = pytensor.shared(np.float64(optim.learning_rate), name="learning_rate")
        self.rng = pytensor.shared(np.random.default_rng(seed), name="dropout_rng")
        self.graph = Graph(config, self.p, self.rng)
        self._compiled: dict[str, object] = {}

    @classmethod
    def versions(cls):
        return {"pytensor": pytensor.__version__}

    @classmethod
    def setup_device(cls, device, threads):
        # Threads were applied to BLAS and OpenMP by early_setup, before NumPy loaded.
        return choose_device(device, [], "PyTensor here runs on the CPU only: it has no "
                                         "maintained GPU backend (use --device cpu, or the "
                                         "jax framework)")

    # ---- compiled functions ----------------------------------------------------------
    def _function(self, name: str):
        if name not in self._compiled:
            self._compiled[name] = getattr(self, f"_build_{name}")()
        return self._compiled[name]

    @staticmethod
    def _inputs():
        return (pt.imatrix("x"), pt.imatrix("y"), pt.tensor3("h0", dtype="float32"),
                pt.tensor3("c0", dtype="float32"))

    def _loss(self, x, y, h0, c0, train):
        logits, h, c, rng = self.graph.forward(x, h0, c0, train)
        losses = losses_of(logits, y)
        # The reported loss is averaged in float64 (a float32 mean of 4096 values drifts by
        # several ulps); the float32 mean is what is differentiated.
        return losses.mean(), pt.cast(losses, "float64").mean(), h, c, rng

    def _objective(self, loss):
        """What is differentiated: the mean cross-entropy plus l1 * sum|W| + l2 * sum W^2
        over the kernels (SPEC section 9), each term only when its weight is non-zero, so
        an unpenalised run's graph is the plain loss. |W|'s gradient at 0 is 0."""
        kernels = [self.p[name] for name in self.config.kernel_names()]
        if self.optim.l1:
            loss = loss + np.float32(self.optim.l1) * sum(pt.sum(pt.abs(w)) for w in kernels)
        if self.optim.l2:
            loss = loss + np.float32(self.optim.l2) * sum(pt.sum(pt.sqr(w)) for w in kernels)
        return loss

    def _build_train(self):
        x, y, h0, c0 = self._inputs()
        loss, report, h, c, next_rng = self._loss(x, y, h0, c0, train=True)
        params = list(self.p.values())
        # h0, c0 are inputs: truncated BPTT. The reported loss stays the cross-entropy.
        grads = pytensor.grad(self._objective(loss), params)
        o = self.optim
        # Global-norm clipping (SPEC section 4) of the whole gradient, penalty included,
        # the norm summed in float64.
        norm = pt.sqrt(sum(pt.sum(pt.sqr(pt.cast(g, "float64"))) for g in grads))
        scale = pt.cast(pt.switch(norm > o.clip_norm, o.clip_norm / norm, 1.0), "float32")
        t = self.count + 1
        updates = [(self.count, t), (self.rng, next_rng)]
        for (name, param), g in zip(self.p.items(), grads):
            updates += self._update(name, param, g * scale, t)
        return pytensor.function([x, y, h0, c0], [report, h, c], updates=updates, mode=MODE)

    def _update(self, name, param, g, t):
        """The update expressions of one parameter and its slots, from its clipped gradient
        g and the update count t: charrnn.common.optim's formulas as graph expressions,
        the bias corrections of Adam in float64 (t and the rate are graph scalars),
        rounded to float32 once."""
        slots = {slot: values[name] for slot, values in self.slots.items()}
        param_new, slots_new = update(pt, self.optim, param, g, slots, t, self.lr, float32)
        return [(slots[slot], slots_new[slot]) for slot in slots] + [(param, param_new)]

    def _build_grads(self):
        x, y, h0, c0 = self._inputs()
        loss, report, h, c, _ = self._loss(x, y, h0, c0, train=False)
        grads = pytensor.grad(self._objective(loss), list(self.p.values()))
        return pytensor.function([x, y, h0, c0], [report, h, c, *grads], mode=MODE)

    def _build_forward(self):
        x, _, h0, c0 = self._inputs()
        logits, h, c, _ = self.graph.forward(x, h0, c0, train=False)
        return pytensor.function([x, h0, c0], [logits.dimshuffle(1, 0, 2), h, c], mode=MODE)

    def _build_step(self):
        """The one-step function of (ids, h0, c0, *the kernels transposed): the kernels
        come in as contiguous (in, out) arrays, `_step_kernels`, where the graph's
        `x @ W.T` becomes `x @ K` (a transpose of a transpose, rewritten away). Numba's
        product with the transposed view of a shared (out, in) kernel does not reach BLAS's
        speed: 92 against 7 us for (1, 128) x (128, 512) at one thread, and generation
        went from about 4,200 to 8,500 characters a second (`generate --threads 1`, the
        machine loaded by a benchmark)."""
        ids, (_, _, h0, c0) = pt.ivector("ids"), self._inputs()
        names = self.config.kernel_names()
        kernels = [pt.matrix(f"{name}.T", dtype="float32") for name in names]
        graph = Graph(self.config, self.p | {name: k.T for name, k in zip(names, kernels)},
                      self.rng)
        # trust_input: no per-call type checks, which cost more than this tiny step's
        # arithmetic; `steps` passes exactly int32 ids and the float32 state it returned.
        return pytensor.function([ids, h0, c0, *kernels], list(graph.step(ids, h0, c0)),
                                 mode=MODE, trust_input=True)

    def _step_kernels(self) -> list[np.ndarray]:
        """The step function's kernel inputs: the current kernels, transposed, contiguous."""
        return [np.ascontiguousarray(self.p[name].get_value(borrow=True).T)
                for name in self.config.kernel_names()]

    # ---- compute ---------------------------------------------------------------------
    def forward(self, x, state):
        x = np.asarray(x, np.int32)
        logits, h, c = self._function("forward")(x, *state)
        return logits, (h, c)

    step = CharRNN.step_by_steps

    def steps(self, ids, state, count, choose):
        # The kernels transposed once for all `count` steps (the weights do not change).
        fn, kernels = self._function("step"), self._step_kernels()
        h, c = (np.ascontiguousarray(a, np.float32) for a in state)  # trust_input: exact types
        for t in range(count):
            logits, h, c = fn(np.ascontiguousarray(ids, np.int32), h, c, *kernels)
            ids = choose(logits, t)
        return h, c

    def loss_and_grads(self, x, y, state):
        loss, h, c, *grads = self._function("grads")(np.asarray(x, np.int32),
                                                     np.asarray(y, np.int32), *state)
        return float(loss), dict(zip(self.p, (np.array(g) for g in grads))), (h, c)

    def set_learning_rate(self, learning_rate):
        self.lr.set_value(np.float64(learning_rate))

    def train_step(self, x, y, state):
        loss, h, c = self._function("train")(np.asarray(x, np.int32),
                                             np.asarray(y, np.int32), *state)
        return float(loss), (h, c)

    # ---- weights and checkpoints -------------------------------------------------------
    def get_weights(self):
        return {name: np.array(s.get_value(), np.float32) for name, s in self.p.items()}

    def save_native(self, directory: Path):
        # The shared variables of the train function, as arrays plus JSON metadata.
        save_arrays_and_slots(
            directory / "pytensor_model.safetensors",
            {name: v.get_value() for name, v in self.p.items()},
            {slot: {name: v.get_value() for name, v in values.items()}
             for slot, values in self.slots.items()},
            int(self.count.get_value()), self.rng.get_value().bit_generator.state)

    def load_native(self, directory: Path):
        params, slots, count, rng_state = load_arrays_and_slots(
            directory / "pytensor_model.safetensors", self.p)
        for name in self.p:
            self.p[name].set_value(params[name])
            for slot, values in self.slots.items():
                values[name].set_value(slots[slot][name])
        self.count.set_value(np.int64(count))
        rng = np.random.default_rng()
        rng.bit_generator.state = rng_state
        self.rng.set_value(rng)


MODEL = PytensorCharRNN  # what charrnn.common.registry loads


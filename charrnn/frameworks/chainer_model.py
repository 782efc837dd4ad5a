"""Chainer: a hand-written time loop per layer (the plain row) or `L.NStepLSTM`,
`L.NStepGRU` and `L.NStepRNNTanh` (the chainer[nstep] variant); Adam as PyTorch has it,
RMSprop (Chainer's own), SGD with PyTorch's momentum, global-norm clipping.

    python chainer_model.py train --num-epochs 1
    python chainer_model.py generate --seed "KING"

Chainer lives in the legacy environment (.venv-legacy); run from any Python, the
script re-executes itself there. What differs from the other frameworks:

- The plain row projects the inputs of all T steps with one `F.linear` per layer and
  runs only the recurrent `F.linear` and the cell per step: for the LSTM, `F.lstm`,
  2.1x the steps/s of `F.n_step_lstm`, which re-stacks its eight per-gate weights
  with Chainer functions at every step on a CPU, and as fast as the NumPy reference.
  Its LSTM kernels are stored in F.lstm's layout (gates a, i, f, o interleaved per
  unit), so the reorder happens once, in the canonical <-> native map (`gate_rows`).
  Chainer has no fused GRU or RNN step, so those cells are Chainer functions
  (`F.sigmoid`, `F.tanh`, ...) on the canonical layout, with the same hoisting.
- NStepLSTM keeps eight weight matrices and eight bias vectors per layer. Its
  docstring names the gates i, f, o, a, but both kernels compute i, f, a, o: the
  canonical order. NStepGRU keeps six, w0..w2 (input) and w3..w5 (recurrent), gates
  r, z, n, with six trained biases; NStepRNNTanh keeps w0, w1, b0, b1. The second
  bias set of the LSTM (b4..b7) and of the RNN (b1) is held at zero and never trained
  (docs/SPEC.md section 1): the function is given its arrays, not the Parameters.
- Generation replays one step as a Chainer static graph (`chainer.static_graph`).
- Chainer's Adam computes lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps),
  which is PyTorch's formula only with a step-dependent eps; Chainer's MomentumSGD keeps
  v = momentum * v - lr * g (the learning rate inside the buffer). `SpecOptimizer` below
  runs charrnn.common.optim's Adam and SGD (b = momentum * b + g, p -= lr * b) instead.
  Chainer's RMSprop (eps outside the sqrt, not centred) is section 9's.
"""


import contextlib
import io
from pathlib import Path

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
from chainer import optimizer_hooks, serializers, static_graph
from chainer.backends import cuda

from charrnn.common.config import ModelConfig, OptimConfig
from charrnn.common.framework import CPU, CharRNN, Device, choose_device
from charrnn.common.optim import penalty_grad, update
from charrnn.common.weights import Weights

# Type checks run on every function call; on these small tensors they cost more
# than the maths, and the conformance tests already pin every shape.
chainer.config.type_check = False

# ---------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------


def gate_rows(rnn_size: int) -> np.ndarray:
    """Canonical row of each row of F.lstm's layout: (4H,) indices.

    F.lstm reads its (B, 4H) input as (B, H, 4): per unit, the gates a, i, f, o side
    by side. Canonical kernels are four (H, in) blocks i, f, g, o, and a is g, so
    native row 4u + j is canonical row (2, 0, 1, 3)[j] * H + u.
    """
    blocks = np.array([2, 0, 1, 3])
    return (blocks[None, :] * rnn_size + np.arange(rnn_size)[:, None]).reshape(-1)


class LSTMLayer(chainer.Link):
    """One LSTM layer with its kernels already in F.lstm's interleaved layout."""

    def __init__(self, input_size: int, rnn_size: int):
        super().__init__()
        with self.init_scope():
            self.w_ih = chainer.Parameter(np.zeros((4 * rnn_size, input_size), np.float32))
            self.w_hh = chainer.Parameter(np.zeros((4 * rnn_size, rnn_size), np.float32))
            self.bias = chainer.Parameter(np.zeros(4 * rnn_size, np.float32))

    def forward(self, xs, h, c):
        """xs (T, B, in), h and c (B, H) -> hs (T, B, H), last h, last c."""
        # The input projection of all T steps as one (T*B, in) x (in, 4H) GEMM; only
        # the recurrent (B, H) x (H, 4H) one is left in the loop: three functions a step.
        gates_x = F.separate(F.linear(xs, self.w_ih, self.bias, n_batch_axes=2), axis=0)
        hs = []
        for g in gates_x:  # (B, 4H)
            c, h = F.lstm(c, g + F.linear(h, self.w_hh))
            hs.append(h)
        return F.stack(hs), h, c

    def step(self, x, h, c):
        """One step: x (B, in), h and c (B, H) -> new h and c."""
        c, h = F.lstm(c, F.linear(x, self.w_ih, self.bias) + F.linear(h, self.w_hh))
        return h, c


class GRULayer(chainer.Link):
    """One GRU layer (docs/SPEC.md section 8) in the canonical layout, gates r, z, n."""

    def __init__(self, input_size: int, rnn_size: int):
        super().__init__()
        with self.init_scope():
            self.w_ih = chainer.Parameter(np.zeros((3 * rnn_size, input_size), np.float32))
            self.w_hh = chainer.Parameter(np.zeros((3 * rnn_size, rnn_size), np.float32))
            self.b_ih = chainer.Parameter(np.zeros(3 * rnn_size, np.float32))
            self.b_hh = chainer.Parameter(np.zeros(3 * rnn_size, np.float32))

    def forward(self, xs, h):
        """xs (T, B, in), h (B, H) -> hs (T, B, H), last h."""
        # As for the LSTM, the input projection of all T steps is one GEMM, cut once
        # into the r and z columns, which the recurrent ones are added to, and n's.
        x_rz, x_n = F.split_axis(F.linear(xs, self.w_ih, self.b_ih, n_batch_axes=2),
                                 [2 * h.shape[-1]], axis=2)
        hs = []
        for x_rz_t, x_n_t in zip(F.separate(x_rz, axis=0), F.separate(x_n, axis=0)):
            h = self._cell(x_rz_t, x_n_t, h)
            hs.append(h)
        return F.stack(hs), h

    def _cell(self, x_rz, x_n, h):
        """The new h from the input projections x_rz (B, 2H), x_n (B, H) and h (B, H)."""
        h_rz, h_n = F.split_axis(F.linear(h, self.w_hh, self.b_hh), [2 * h.shape[-1]], axis=1)
        r, z = F.split_axis(F.sigmoid(x_rz + h_rz), 2, axis=1)  # one sigmoid for both
        # z * h + (1 - z) * n as one function: three fewer nodes a step than written out.
        return F.linear_interpolate(z, h, F.tanh(x_n + r * h_n))

    def step(self, x, h):
        """One step: x (B, in), h (B, H) -> (new h,)."""
        x_rz, x_n = F.split_axis(F.linear(x, self.w_ih, self.b_ih), [2 * h.shape[-1]], axis=1)
        return (self._cell(x_rz, x_n, h),)


class RNNLayer(chainer.Link):
    """One vanilla RNN layer, h' = tanh(W_ih x + W_hh h + bias), in the canonical layout."""

    def __init__(self, input_size: int, rnn_size: int):
        super().__init__()
        with self.init_scope():
            self.w_ih = chainer.Parameter(np.zeros((rnn_size, input_size), np.float32))
            self.w_hh = chainer.Parameter(np.zeros((rnn_size, rnn_size), np.float32))
            self.bias = chainer.Parameter(np.zeros(rnn_size, np.float32))

    def forward(self, xs, h):
        """xs (T, B, in), h (B, H) -> hs (T, B, H), last h."""
        hs = []
        for x in F.separate(F.linear(xs, self.w_ih, self.bias, n_batch_axes=2), axis=0):
            h = F.tanh(x + F.linear(h, self.w_hh))
            hs.append(h)
        return F.stack(hs), h

    def step(self, x, h):
        """One step: x (B, in), h (B, H) -> (new h,)."""
        return (F.tanh(F.linear(x, self.w_ih, self.bias) + F.linear(h, self.w_hh)),)


LAYERS = {"lstm": LSTMLayer, "gru": GRULayer, "rnn": RNNLayer}


class Net(chainer.Chain):
    """Embedding -> a hand-written time loop per layer -> Dense, all time-major. The
    state is (h, c) for the LSTM and (h,) for the GRU and RNN, each (L, B, H)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        with self.init_scope():
            self.embedding = L.EmbedID(config.vocab_size, config.embedding_size)
            # Registered as "lstms", "grus" or "rnns": the LSTM keeps the names that
            # existing native checkpoints hold.
            setattr(self, f"{config.cell}s", chainer.ChainList(*[
                LAYERS[config.cell](config.embedding_size if k == 0 else config.rnn_size,
                                    config.rnn_size) for k in range(config.num_layers)]))
            self.dense = L.Linear(config.rnn_size, config.vocab_size)
        self.layers = getattr(self, f"{config.cell}s")

    def forward(self, x, *state):
        """x (B, T) int32, state arrays (L, B, H) -> logits (T, B, V), new state arrays."""
        p = self.config.drop_rate
        out = F.dropout(self.embedding(x.T), p)  # (T, B, E); identity unless config.train
        new_state = []
        for k, layer in enumerate(self.layers):
            out, *state_k = layer(out, *(s[k] for s in state))
            out = F.dropout(out, p)  # (T, B, H)
            new_state.append([s.array for s in state_k])
        xp = self.xp  # raw arrays: the graph is cut there (truncated BPTT)
        return (self.dense(out, n_batch_axes=2),
                *(xp.stack(layers) for layers in zip(*new_state)))


class StepNet(chainer.Chain):
    """One generation step of `net` as a Chainer static graph: the first call per input
    shape traces it; later calls replay the recorded array operations without building
    Variables and FunctionNodes (1.5x the steps/s of the same code run define-by-run)."""

    def __init__(self, net: Net):
        super().__init__()
        self.net = net  # an attribute, not a child: the optimizer owns its Parameters

    @static_graph
    def __call__(self, ids, *state):
        """ids (B,) int32, state (L, B, H) each -> logits (B, V), new state."""
        # The schedule holds the Parameters' arrays, which every update and load
        # changes in place (the optimisers' -=, np.copyto), so it never goes stale.
        out = self.net.embedding(ids)  # (B, E)
        new_state = []
        for k, layer in enumerate(self.net.layers):
            state_k = layer.step(out, *(s[k] for s in state))
            out = state_k[0]  # h
            new_state.append(state_k)
        return (self.net.dense(out), *(F.stack(layers) for layers in zip(*new_state)))


# The idiomatic links, their functions, and how many of a layer's bias vectors are
# trained: NStepLSTM's b4..b7 and NStepRNNTanh's b1 are held at zero.
NSTEP = {"lstm": (L.NStepLSTM, F.n_step_lstm, 4), "gru": (L.NStepGRU, F.n_step_gru, 6),
         "rnn": (L.NStepRNNTanh, F.n_step_rnn, 1)}


class NStepNet(chainer.Chain):
    """The same network through `L.NStepLSTM`'s (`NStepGRU`'s, `NStepRNNTanh`'s)
    parameters and `F.n_step_lstm` (`n_step_gru`, `n_step_rnn`)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        link, self.n_step, self.trained_biases = NSTEP[config.cell]
        with self.init_scope():
            self.embedding = L.EmbedID(config.vocab_size, config.embedding_size)
            # The link's own dropout acts on the inputs of layers 2..L, i.e. after every
            # recurrent layer but the last; forward() adds it after the embedding and
            # after the last layer, so there is dropout after each (docs/SPEC.md
            # section 1). Registered as "lstm", "gru" or "rnn", like the LSTM's
            # existing native checkpoints.
            setattr(self, config.cell, link(config.num_layers, config.embedding_size,
                                            config.rnn_size, config.drop_rate))
            self.dense = L.Linear(config.rnn_size, config.vocab_size)
        self.rnn = getattr(self, config.cell)

    def biases(self):
        """Per layer: the trained bias Parameters, then the held ones as raw arrays (zeros)."""
        # A raw array is a constant to the function: no gradient reaches it.
        n = self.trained_biases
        return [list(layer[:n]) + [b.array for b in layer[n:]] for layer in self.rnn.bs]

    def forward(self, x, *state):
        """x (B, T) int32, state arrays (L, B, H) -> logits (T, B, V), new state arrays."""
        p = self.config.drop_rate
        emb = F.dropout(self.embedding(x.T), p)  # (T, B, E)
        # The function, not the link's __call__: every row has the same length, so the
        # link's sort, permutation and per-row split would be pure overhead.
        *state, ys = self.n_step(self.config.num_layers, p, *state, self.rnn.ws,
                                 self.biases(), F.separate(emb, axis=0))
        out = F.dropout(F.stack(ys), p)  # (T, B, H)
        return (self.dense(out, n_batch_axes=2), *(s.array for s in state))


class SpecOptimizer(chainer.optimizer.GradientMethod):
    """Adam (PyTorch's bias correction and eps placement, docs/SPEC.md section 4) or SGD
    (PyTorch's momentum, section 9) as charrnn.common.optim writes them, on NumPy or
    CuPy arrays. Every parameter's rule reads `lr` from these hyperparameters."""

    def __init__(self, optim: OptimConfig):
        super().__init__()
        self.optim = optim
        self.hyperparam.lr = optim.learning_rate

    def create_update_rule(self):
        return SpecUpdateRule(self.optim, self.hyperparam)


class SpecUpdateRule(chainer.optimizer.UpdateRule):
    def __init__(self, optim: OptimConfig, parent_hyperparam):
        super().__init__(parent_hyperparam)
        self.optim = optim

    def init_state(self, param):
        # Adam's m and v or SGD's b: the names checkpoints keep them under.
        for slot in self.optim.slots():
            self.state[slot] = param.device.xp.zeros_like(param.array)

    def update_core(self, param):
        # self.t was already incremented for this step by UpdateRule.update. Written back
        # in place: the static one-step graph holds the Parameters' arrays.
        if param.grad is None:
            return
        array, slots = update(param.device.xp, self.optim, param.array, param.grad,
                              self.state, self.t, self.hyperparam.lr, np.float32)
        param.array[...] = array
        for slot, a in slots.items():
            self.state[slot][...] = a


def make_optimizer(optim: OptimConfig) -> chainer.Optimizer:
    """The optimiser of docs/SPEC.md section 9: Chainer's own RMSprop, whose default
    (eps outside the sqrt, not centred) is the spec's formula; our Adam and SGD."""
    if optim.optimizer == "rmsprop":
        return chainer.optimizers.RMSprop(lr=optim.learning_rate, alpha=optim.decay_rate,
                                          eps=optim.eps)
    return SpecOptimizer(optim)


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


def _gpu_names() -> list[str]:
    """The CUDA GPUs CuPy sees; none without CuPy or a driver."""
    if not cuda.available:
        return []
    runtime = cuda.cupy.cuda.runtime
    try:
        count = runtime.getDeviceCount()
    except runtime.CUDARuntimeError:  # CuPy installed, but no driver or no GPU
        return []
    names = [runtime.getDeviceProperties(i)["name"] for i in range(count)]
    return [n.decode() if isinstance(n, bytes) else n for n in names]


class ChainerCharRNN(CharRNN):
    framework = "chainer"
    # ChainerMN is Chainer's data parallelism; it runs over MPI (mpi4py built against an
    # MPI library), which neither environment installs.
    data_parallel_refusal = ("ChainerMN, Chainer's data parallelism, needs MPI (an MPI "
                             "library and mpi4py built against it), which is not set up here")
    # bf16-mixed: Chainer computes with NumPy arrays on the CPU, and NumPy 1.23.5 has no
    # bfloat16 dtype; `chainer.config.dtype`, F.cast and the links all raise "data type
    # 'bfloat16' not understood" (measured). Its one reduced precision is float16
    # (mixed16); iDeep, its oneDNN backend, has no wheel for this Python.
    precision_refusal = ("Chainer 7.8.1 computes with NumPy 1.23.5, which has no bfloat16 "
                         "dtype (its one reduced precision is float16)")
    net_cls = Net

    def __init__(self, config: ModelConfig, weights: Weights, optim: OptimConfig,
                 device: Device = CPU, seed: int = 0):
        super().__init__(config, weights, optim, device, seed)
        self.chainer_device = chainer.get_device(f"@cupy:{device.index}" if device.is_gpu
                                                 else "@numpy")
        self.chainer_device.use()
        # F.dropout draws from the global NumPy (CuPy) generator; seeded here,
        # saved in native checkpoints.
        np.random.seed(seed)
        if self.chainer_device.xp is not np:
            self.chainer_device.xp.random.seed(seed)
        self.net = self.net_cls(config)
        self._load_canonical(weights)
        self.net.to_device(self.chainer_device)
        self.optimizer = make_optimizer(optim)
        self.optimizer.setup(self.net)
        # Sums the squares of every gradient into one norm: global, not per tensor.
        self.optimizer.add_hook(optimizer_hooks.GradientClipping(optim.clip_norm))
        native = self._native()
        for _, zeroed in native.values():
            for param in zeroed:
                param.update_rule.enabled = False  # the second bias is held at zero
        # The native Parameters holding the kernels that --l1 and --l2 penalise.
        self._kernels = [p for name in config.kernel_names() for p in native[name][0]]
        self._step_net = None  # the static one-step graph, traced at the first step()
        self._num_states = 2 if config.cell == "lstm" else 1  # (h, c) or (h,)

    @classmethod
    def versions(cls):
        versions = {"chainer": chainer.__version__, "numpy": np.__version__}
        if cuda.available:
            versions["cupy"] = cuda.cupy.__version__
        return versions

    @classmethod
    def setup_device(cls, device, threads):
        # Threads: the CPU path is NumPy's BLAS, pinned by early_setup's variables.
        return choose_device(device, _gpu_names(),
                             "Chainer has no CuPy with a usable CUDA GPU here "
                             "(install cupy-cudaXXx in .venv-legacy)")

    # ---- weights: canonical <-> native -----------------------------------------------
    def _native(self) -> dict[str, tuple[list, list]]:
        """Canonical name -> (trained Parameters, held-at-zero Parameters): one Parameter
        each here, the LSTM kernels and biases with their rows in `gate_rows` order, the
        GRU's and RNN's in the canonical order."""
        net = self.net
        native = {"embedding": ([net.embedding.W], []), "dense.w": ([net.dense.W], []),
                  "dense.b": ([net.dense.b], [])}
        for k, layer in enumerate(net.layers):
            prefix = self.config.layer(k)
            native[f"{prefix}.w_ih"] = ([layer.w_ih], [])
            native[f"{prefix}.w_hh"] = ([layer.w_hh], [])
            for bias in self.config.bias_names():  # "bias", or GRU's "b_ih" and "b_hh"
                native[f"{prefix}.{bias}"] = ([getattr(layer, bias)], [])
        return native

    def _rows(self, name: str):
        """Canonical rows of the native arrays of `name`, concatenated along axis 0."""
        return gate_rows(self.config.rnn_size) if name.startswith("lstm.") else slice(None)

    def _load_canonical(self, w: Weights):
        # The canonical array into the trained Parameters, zeros into the second bias.
        for name, (trained, zeroed) in self._native().items():
            native = w[name][self._rows(name)]
            for param, block in zip(trained, np.split(native, len(trained))):
                param.array[...] = block
            for param in zeroed:
                param.array[...] = 0.0

    def _canonical(self, name: str, arrays) -> np.ndarray:
        """Native device arrays of `name` -> its canonical float32 NumPy array."""
        native = np.concatenate([cuda.to_cpu(a) for a in arrays]).astype(np.float32)
        canonical = np.empty_like(native)
        canonical[self._rows(name)] = native
        return canonical

    def get_weights(self):
        # The sum of the two biases: the second is zero, but the sum is the definition.
        weights = {}
        for name, (trained, zeroed) in self._native().items():
            weights[name] = self._canonical(name, [p.array for p in trained])
            if zeroed:
                weights[name] += self._canonical(name, [p.array for p in zeroed])
        return weights

    # ---- state: device arrays (L, B, H), never Variables, so no graph is kept --------
    # (h, c) for the LSTM; (h,) for the GRU and RNN, which have no cell state.
    def zero_state(self, batch_size):
        shape = (self.config.num_layers, batch_size, self.config.rnn_size)
        xp = self.chainer_device.xp
        return tuple(xp.zeros(shape, np.float32) for _ in range(self._num_states))

    def state_to_numpy(self, state):
        h, *c = (np.array(cuda.to_cpu(s), np.float32) for s in state)
        return h, (c[0] if c else np.zeros_like(h))

    def state_from_numpy(self, h, c):
        send = self.chainer_device.send
        return tuple(send(np.array(s, np.float32)) for s in (h, c)[:self._num_states])

    def _ids(self, a):
        return self.chainer_device.send(np.ascontiguousarray(a, np.int32))

    # ---- compute ---------------------------------------------------------------------
    def forward(self, x, state):
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            logits, *state = self.net(self._ids(x), *state)  # (T, B, V)
        return np.ascontiguousarray(cuda.to_cpu(logits.array).transpose(1, 0, 2)), tuple(state)

    step = CharRNN.step_by_steps

    def steps(self, ids, state, count, choose):
        if self._step_net is None:
            self._step_net = StepNet(self.net)
        # The settings entered once for all the steps, not per step.
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            for t in range(count):
                inputs = (chainer.Variable(self._ids(ids)), *(chainer.Variable(s) for s in state))
                if t == 0:
                    # Chainer prints "end of build_schedule()" on stdout, where the text
                    # goes, when it traces a schedule: only ever at a first step (the
                    # shapes stay the same after it); it is swallowed.
                    with contextlib.redirect_stdout(io.StringIO()):
                        logits, *out = self._step_net(*inputs)
                else:
                    logits, *out = self._step_net(*inputs)
                # Copies: the outputs are the schedule's own buffers, rewritten by the next
                # call.
                state = tuple(s.array.copy() for s in out)
                ids = choose(cuda.to_cpu(logits.array).copy(), t)
        return state

    def _loss(self, x, y, state):
        logits, *state = self.net(self._ids(x), *state)  # (T, B, V): labels go time-major
        loss = F.softmax_cross_entropy(logits.reshape(-1, self.config.vocab_size),
                                       self._ids(y.T).reshape(-1))  # mean over B x T
        return loss, tuple(state)

    def _add_penalty_grads(self):
        """+ l1 * sign(W) + 2 * l2 * W on the kernels' gradients (docs/SPEC.md section 9;
        sign(0) = 0): the penalties' gradient terms, before clipping sees the gradients."""
        o = self.optim
        if not o.penalised:
            return
        for param in self._kernels:
            param.grad += penalty_grad(self.chainer_device.xp, param.array, o.l1, o.l2,
                                       np.float32)

    def loss_and_grads(self, x, y, state):
        with chainer.using_config("train", False):
            self.net.cleargrads()
            loss, state = self._loss(x, y, state)
            loss.backward()
        self._add_penalty_grads()
        # The trained Parameters' gradients; the second bias is a constant, without one.
        grads = {name: self._canonical(name, [p.grad for p in trained])
                 for name, (trained, _) in self._native().items()}
        self.net.cleargrads()
        return float(loss.array), grads, state

    def set_learning_rate(self, learning_rate):
        # Every parameter's update rule reads `lr` from the optimiser's hyperparameters.
        self.optimizer.hyperparam.lr = learning_rate

    def train_step(self, x, y, state):
        # Chainer's F.dropout draws a mask even at ratio 0; "train" only switches dropout.
        with chainer.using_config("train", self.config.drop_rate > 0):
            self.net.cleargrads()
            loss, state = self._loss(x, y, state)
            loss.backward()
        self._add_penalty_grads()
        self.optimizer.update()  # hooks (clipping) first, then the update rule per parameter
        return float(loss.array), state  # float() copies to the host: synchronised

    # ---- native checkpoints ------------------------------------------------------------
    def save_native(self, directory: Path):
        serializers.save_npz(str(directory / "chainer_model.npz"), self.net)
        serializers.save_npz(str(directory / "chainer_optimizer.npz"), self.optimizer)
        _, keys, pos, has_gauss, gauss = np.random.get_state()
        np.savez(str(directory / "chainer_rng.npz"), keys=keys,
                 scalars=np.array([pos, has_gauss, gauss], np.float64))

    def load_native(self, directory: Path):
        serializers.load_npz(str(directory / "chainer_model.npz"), self.net)
        serializers.load_npz(str(directory / "chainer_optimizer.npz"), self.optimizer)
        rng = directory / "chainer_rng.npz"
        if rng.exists():
            with np.load(str(rng)) as saved:
                pos, has_gauss, gauss = saved["scalars"]
                np.random.set_state(("MT19937", saved["keys"], int(pos), int(has_gauss),
                                     float(gauss)))


class NStepCharRNN(ChainerCharRNN):
    """The idiomatic API, kept as the variant row chainer[nstep]: `L.NStepLSTM`'s
    (`NStepGRU`'s, `NStepRNNTanh`'s) parameters through `F.n_step_lstm` (`n_step_gru`,
    `n_step_rnn`), which re-stack the per-gate weights with Chainer functions at every
    time step on a CPU."""

    framework = "chainer[nstep]"
    net_cls = NStepNet

    def _native(self):
        """Canonical name -> (trained Parameters, held-at-zero Parameters).

        The links keep one (H, in) or (H, H) block per gate, in the canonical order:
        NStepLSTM's i, f, a, o (a is g), NStepGRU's r, z, n, so concatenated they are the
        canonical kernels. Only the LSTM's and the RNN's "bias" have a second list,
        b4..b7 and b1; the GRU's six biases are its b_ih and b_hh.
        """
        net, config = self.net, self.config
        native = {"embedding": ([net.embedding.W], []), "dense.w": ([net.dense.W], []),
                  "dense.b": ([net.dense.b], [])}
        n = config.gates
        for k, layer in enumerate(net.rnn):
            prefix = config.layer(k)
            ws = [getattr(layer, f"w{j}") for j in range(2 * n)]
            bs = [getattr(layer, f"b{j}") for j in range(2 * n)]
            native[f"{prefix}.w_ih"] = (ws[:n], [])
            native[f"{prefix}.w_hh"] = (ws[n:], [])
            if config.cell == "gru":
                native[f"{prefix}.b_ih"] = (bs[:n], [])
                native[f"{prefix}.b_hh"] = (bs[n:], [])
            else:
                native[f"{prefix}.bias"] = (bs[:n], bs[n:])
        return native

    def _rows(self, name):
        return slice(None)  # the canonical order as it is

    step = CharRNN.step  # forward() at T = 1: the NStep function itself
    steps = CharRNN.steps  # the loop over that step


MODEL = ChainerCharRNN  # what charrnn.common.registry loads
VARIANTS = {"nstep": NStepCharRNN}


"""Chainer: a hand-written LSTM time loop of `F.linear` + `F.lstm` (the plain row) or
`L.NStepLSTM` (the chainer[nstep] variant), Adam as PyTorch has it, global-norm clipping.

    python chainer_model.py train --num-epochs 1
    python chainer_model.py generate --seed "KING"

Chainer lives in the legacy environment (.venv-legacy); run from any Python, the
script re-executes itself there. What differs from the other frameworks:

- The plain row projects the inputs of all T steps with one `F.linear` per layer and
  runs only the recurrent `F.linear` and `F.lstm` per step: 2.1x the steps/s of
  `F.n_step_lstm`, which re-stacks its eight per-gate weights with Chainer
  functions at every step on a CPU, and as fast as the NumPy reference. Its kernels
  are stored in F.lstm's layout (gates a, i, f, o interleaved per unit), so the
  reorder happens once, in the canonical <-> native map (`gate_rows`).
- NStepLSTM keeps eight weight matrices and eight bias vectors per layer. Its
  docstring names the gates i, f, o, a, but both kernels compute i, f, a, o: the
  canonical order. Its second bias set (b4..b7) is held at zero and never trained
  (docs/SPEC.md section 1): the LSTM is given its arrays, not the Parameters.
- Generation replays one step as a Chainer static graph (`chainer.static_graph`).
- Chainer's Adam computes lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps),
  which is PyTorch's formula only with a step-dependent eps; `TorchAdam` below
  is the PyTorch formula itself.
"""

from common.bootstrap import early_setup

early_setup(__file__)  # before NumPy loads its BLAS thread pool

import contextlib
import io
from pathlib import Path

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
from chainer import optimizer_hooks, serializers, static_graph
from chainer.backends import cuda

from common.cli import main
from common.config import ModelConfig, OptimConfig
from common.framework import CPU, CharRNN, Device, choose_device
from common.weights import Weights

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


class Net(chainer.Chain):
    """Embedding -> a hand-written time loop per layer -> Dense, all time-major."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        with self.init_scope():
            self.embedding = L.EmbedID(config.vocab_size, config.embedding_size)
            self.lstms = chainer.ChainList(*[
                LSTMLayer(config.embedding_size if k == 0 else config.rnn_size,
                          config.rnn_size) for k in range(config.num_layers)])
            self.dense = L.Linear(config.rnn_size, config.vocab_size)

    def forward(self, x, h, c):
        """x (B, T) int32, h and c (L, B, H) -> logits (T, B, V), new h and c (L, B, H)."""
        p = self.config.drop_rate
        out = F.dropout(self.embedding(x.T), p)  # (T, B, E); identity unless config.train
        new_h, new_c = [], []
        for k, layer in enumerate(self.lstms):
            out, h_k, c_k = layer(out, h[k], c[k])
            out = F.dropout(out, p)  # (T, B, H)
            new_h.append(h_k.array)
            new_c.append(c_k.array)
        xp = self.xp  # raw arrays: the graph is cut there (truncated BPTT)
        return self.dense(out, n_batch_axes=2), xp.stack(new_h), xp.stack(new_c)


class StepNet(chainer.Chain):
    """One generation step of `net` as a Chainer static graph: the first call per input
    shape traces it; later calls replay the recorded array operations without building
    Variables and FunctionNodes (1.5x the steps/s of the same code run define-by-run)."""

    def __init__(self, net: Net):
        super().__init__()
        self.net = net  # an attribute, not a child: the optimizer owns its Parameters

    @static_graph
    def __call__(self, ids, h, c):
        """ids (B,) int32, h and c (L, B, H) -> logits (B, V), new h and c (L, B, H)."""
        # The schedule holds the Parameters' arrays, which every update and load
        # changes in place (Adam's -=, np.copyto), so it never goes stale.
        out = self.net.embedding(ids)  # (B, E)
        new_h, new_c = [], []
        for k, layer in enumerate(self.net.lstms):
            c_k, out = F.lstm(c[k], F.linear(out, layer.w_ih, layer.bias)
                              + F.linear(h[k], layer.w_hh))
            new_h.append(out)
            new_c.append(c_k)
        return self.net.dense(out), F.stack(new_h), F.stack(new_c)


class NStepNet(chainer.Chain):
    """The same network through `L.NStepLSTM`'s parameters and `F.n_step_lstm`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        with self.init_scope():
            self.embedding = L.EmbedID(config.vocab_size, config.embedding_size)
            # NStepLSTM's own dropout acts on the inputs of layers 2..L, i.e. after every
            # LSTM layer but the last; forward() adds it after the embedding and after
            # the last layer, so there is dropout after each (docs/SPEC.md section 1).
            self.lstm = L.NStepLSTM(config.num_layers, config.embedding_size,
                                    config.rnn_size, config.drop_rate)
            self.dense = L.Linear(config.rnn_size, config.vocab_size)

    def biases(self):
        """Per layer: the trained Parameters b0..b3, then b4..b7 as raw arrays (zeros)."""
        # A raw array is a constant to F.n_step_lstm: no gradient reaches b4..b7.
        return [list(layer[:4]) + [b.array for b in layer[4:]] for layer in self.lstm.bs]

    def forward(self, x, h, c):
        """x (B, T) int32, h and c (L, B, H) -> logits (T, B, V), new h and c (L, B, H)."""
        p = self.config.drop_rate
        emb = F.dropout(self.embedding(x.T), p)  # (T, B, E)
        # The function, not the link's __call__: every row has the same length, so the
        # link's sort, permutation and per-row split would be pure overhead.
        h, c, ys = F.n_step_lstm(self.config.num_layers, p, h, c, self.lstm.ws,
                                 self.biases(), F.separate(emb, axis=0))
        out = F.dropout(F.stack(ys), p)  # (T, B, H)
        return self.dense(out, n_batch_axes=2), h.array, c.array


class TorchAdam(chainer.optimizer.GradientMethod):
    """Adam with PyTorch's bias correction and eps placement (docs/SPEC.md section 4)."""

    def __init__(self, lr, beta1, beta2, eps):
        super().__init__()
        self.hyperparam.lr, self.hyperparam.beta1 = lr, beta1
        self.hyperparam.beta2, self.hyperparam.eps = beta2, eps

    def create_update_rule(self):
        return TorchAdamRule(self.hyperparam)


class TorchAdamRule(chainer.optimizer.UpdateRule):
    def init_state(self, param):
        xp = param.device.xp
        self.state["m"] = xp.zeros_like(param.array)
        self.state["v"] = xp.zeros_like(param.array)

    def update_core(self, param):
        # The NumPy reference's operations in its order, on NumPy or CuPy arrays;
        # self.t was already incremented for this step by UpdateRule.update.
        hp, g = self.hyperparam, param.grad
        if g is None:
            return
        m, v = self.state["m"], self.state["v"]
        correction1 = 1.0 - hp.beta1 ** self.t
        correction2 = 1.0 - hp.beta2 ** self.t
        m *= np.float32(hp.beta1)
        m += np.float32(1.0 - hp.beta1) * g
        v *= np.float32(hp.beta2)
        v += np.float32(1.0 - hp.beta2) * g * g
        denom = param.device.xp.sqrt(v) / np.float32(np.sqrt(correction2)) + np.float32(hp.eps)
        param.array -= np.float32(hp.lr / correction1) * m / denom


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
        self.optimizer = TorchAdam(optim.learning_rate, optim.beta1, optim.beta2, optim.eps)
        self.optimizer.setup(self.net)
        # Sums the squares of every gradient into one norm: global, not per tensor.
        self.optimizer.add_hook(optimizer_hooks.GradientClipping(optim.clip_norm))
        for _, zeroed in self._native().values():
            for param in zeroed:
                param.update_rule.enabled = False  # the second bias is held at zero
        self._step_net = None  # the static one-step graph, traced at the first step()

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
        each here, the LSTM kernels and biases with their rows in `gate_rows` order."""
        net = self.net
        native = {"embedding": ([net.embedding.W], []), "dense.w": ([net.dense.W], []),
                  "dense.b": ([net.dense.b], [])}
        for k, layer in enumerate(net.lstms):
            native[f"lstm.{k}.w_ih"] = ([layer.w_ih], [])
            native[f"lstm.{k}.w_hh"] = ([layer.w_hh], [])
            native[f"lstm.{k}.bias"] = ([layer.bias], [])
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

    # ---- state: (h, c) device arrays (L, B, H), never Variables, so no graph is kept ----
    def zero_state(self, batch_size):
        shape = (self.config.num_layers, batch_size, self.config.rnn_size)
        xp = self.chainer_device.xp
        return xp.zeros(shape, np.float32), xp.zeros(shape, np.float32)

    def state_to_numpy(self, state):
        return tuple(np.array(cuda.to_cpu(s), np.float32) for s in state)

    def state_from_numpy(self, h, c):
        send = self.chainer_device.send
        return send(np.array(h, np.float32)), send(np.array(c, np.float32))

    def _ids(self, a):
        return self.chainer_device.send(np.ascontiguousarray(a, np.int32))

    # ---- compute ---------------------------------------------------------------------
    def forward(self, x, state):
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            logits, h, c = self.net(self._ids(x), *state)  # (T, B, V)
        return np.ascontiguousarray(cuda.to_cpu(logits.array).transpose(1, 0, 2)), (h, c)

    def step(self, ids, state):
        if self._step_net is None:
            self._step_net = StepNet(self.net)
        # Chainer prints "end of build_schedule()" on stdout, where the text goes, each
        # time it traces a schedule; it is swallowed.
        with chainer.using_config("train", False), chainer.no_backprop_mode(), \
                contextlib.redirect_stdout(io.StringIO()):
            logits, h, c = self._step_net(chainer.Variable(self._ids(ids)),
                                          chainer.Variable(state[0]),
                                          chainer.Variable(state[1]))
        # Copies: the outputs are the schedule's own buffers, rewritten by the next call.
        return cuda.to_cpu(logits.array).copy(), (h.array.copy(), c.array.copy())

    def _loss(self, x, y, state):
        logits, h, c = self.net(self._ids(x), *state)  # (T, B, V): the labels go time-major
        loss = F.softmax_cross_entropy(logits.reshape(-1, self.config.vocab_size),
                                       self._ids(y.T).reshape(-1))  # mean over B x T
        return loss, (h, c)

    def loss_and_grads(self, x, y, state):
        with chainer.using_config("train", False):
            self.net.cleargrads()
            loss, state = self._loss(x, y, state)
            loss.backward()
        # The trained Parameters' gradients; the second bias is a constant, without one.
        grads = {name: self._canonical(name, [p.grad for p in trained])
                 for name, (trained, _) in self._native().items()}
        self.net.cleargrads()
        return float(loss.array), grads, state

    def train_step(self, x, y, state):
        # Chainer's F.dropout draws a mask even at ratio 0; "train" only switches dropout.
        with chainer.using_config("train", self.config.drop_rate > 0):
            self.net.cleargrads()
            loss, state = self._loss(x, y, state)
            loss.backward()
        self.optimizer.update()  # hooks (clipping) first, then TorchAdamRule per parameter
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
    parameters through `F.n_step_lstm`, which re-stacks the eight per-gate weights
    with Chainer functions at every time step on a CPU."""

    framework = "chainer[nstep]"
    net_cls = NStepNet

    def _native(self):
        """Canonical name -> (trained Parameters, held-at-zero Parameters).

        NStepLSTM keeps four per-gate (H, in) blocks in the order i, f, a, o: since a
        is g, concatenated they are the canonical (4H, in) kernel. Only "lstm.k.bias"
        has a second list, b4..b7.
        """
        net = self.net
        native = {"embedding": ([net.embedding.W], []), "dense.w": ([net.dense.W], []),
                  "dense.b": ([net.dense.b], [])}
        for k, layer in enumerate(net.lstm):
            ws = [getattr(layer, f"w{j}") for j in range(8)]
            bs = [getattr(layer, f"b{j}") for j in range(8)]
            native[f"lstm.{k}.w_ih"] = (ws[:4], [])
            native[f"lstm.{k}.w_hh"] = (ws[4:], [])
            native[f"lstm.{k}.bias"] = (bs[:4], bs[4:])
        return native

    def _rows(self, name):
        return slice(None)  # the canonical order as it is

    step = CharRNN.step  # forward() at T = 1: NStepLSTM itself


MODEL = ChainerCharRNN  # what common.registry loads
VARIANTS = {"nstep": NStepCharRNN}

if __name__ == "__main__":
    main(MODEL, variants=VARIANTS)

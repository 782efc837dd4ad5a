"""Chainer: `L.NStepLSTM` (cuDNN through CuPy on a GPU), Adam as PyTorch has it,
global-norm clipping.

    python chainer_model.py train --num-epochs 1
    python chainer_model.py generate --seed "KING"

Chainer lives in the legacy environment (.venv-legacy); run from any Python, the
script re-executes itself there. What differs from the other frameworks:

- NStepLSTM keeps eight weight matrices and eight bias vectors per layer. Its
  docstring names the gates i, f, o, a, but both kernels (the CPU one stacks
  W2 as the cell input `a` for F.lstm, cuDNN reads linLayerID 2 as the new
  memory gate) compute i, f, a, o: the canonical i, f, g, o order, so the
  canonical (4H, in) kernel is just cut into four (H, in) blocks.
- The second bias set (b4..b7) is held at zero and never trained (docs/SPEC.md
  section 1): the LSTM is given its arrays, not the Parameters, so it is a constant
  outside the graph, and its update rule is disabled.
- Chainer's Adam computes lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps),
  which is PyTorch's formula only with a step-dependent eps; `TorchAdam` below
  is the PyTorch formula itself.
"""

from common.bootstrap import early_setup

early_setup(__file__)  # before NumPy loads its BLAS thread pool

from pathlib import Path

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
from chainer import optimizer_hooks, serializers
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


class Net(chainer.Chain):
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
        """x (B, T) int32, h and c (L, B, H) -> logits (B, T, V), new (h, c) Variables."""
        p = self.config.drop_rate
        emb = F.dropout(self.embedding(x), p)  # (B, T, E); identity unless config.train
        # The function, not the link's __call__: every row has the same length, so the
        # link's sort, permutation and per-row split would be pure overhead. It wants
        # the sequence time-major: a list of T arrays (B, E).
        xs = F.separate(F.transpose(emb, (1, 0, 2)), axis=0)
        h, c, ys = F.n_step_lstm(self.config.num_layers, p, h, c, self.lstm.ws,
                                 self.biases(), xs)
        out = F.dropout(F.stack(ys, axis=1), p)  # (B, T, H)
        logits = self.dense(out, n_batch_axes=2)  # (B, T, V)
        return logits, h, c


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


def _stack(arrays) -> np.ndarray:
    """Per-gate device arrays (H, ...) -> one float32 NumPy copy (4H, ...) on the host."""
    return np.concatenate([cuda.to_cpu(a) for a in arrays]).astype(np.float32, copy=False)


class ChainerCharRNN(CharRNN):
    framework = "chainer"

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
        self.net = Net(config)
        self._load_canonical(weights)
        self.net.to_device(self.chainer_device)
        self.optimizer = TorchAdam(optim.learning_rate, optim.beta1, optim.beta2, optim.eps)
        self.optimizer.setup(self.net)
        # Sums the squares of every gradient into one norm: global, not per tensor.
        self.optimizer.add_hook(optimizer_hooks.GradientClipping(optim.clip_norm))
        for _, zeroed in self._native().values():
            for param in zeroed:
                param.update_rule.enabled = False  # the second bias is held at zero
        self._step_cache = None  # (optimizer.t, per-layer kernels) for step()

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

    # ---- weights: canonical <-> NStepLSTM (same gate order; one (H, in) block per gate) --
    def _native(self) -> dict[str, tuple[list, list]]:
        """Canonical name -> (trained Parameters, held-at-zero Parameters).

        Each list, concatenated along axis 0, has the canonical shape: NStepLSTM's
        four per-gate (H, in) blocks in the order i, f, a, o are the canonical
        (4H, in) kernel, since a is g. Only "lstm.k.bias" has a second list, b4..b7.
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

    def _load_canonical(self, w: Weights):
        # The canonical array into the trained Parameters, zeros into the second bias.
        for name, (trained, zeroed) in self._native().items():
            for param, block in zip(trained, np.split(w[name], len(trained))):
                param.array[...] = block
            for param in zeroed:
                param.array[...] = 0.0

    def get_weights(self):
        # The sum of the two biases: the second is zero, but the sum is the definition.
        weights = {}
        for name, (trained, zeroed) in self._native().items():
            weights[name] = _stack([p.array for p in trained])
            if zeroed:
                weights[name] += _stack([p.array for p in zeroed])
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
            logits, h, c = self.net(self._ids(x), *state)
        return cuda.to_cpu(logits.array), (h.array, c.array)

    def _step_weights(self):
        """Per layer (w_ih (4H, in), w_hh (4H, H), bias (4H,)) in F.lstm's layout: the
        gates a, i, f, o interleaved per unit. Rebuilt only when an update has happened."""
        if self._step_cache is None or self._step_cache[0] != self.optimizer.t:
            xp = self.chainer_device.xp

            def interleave(blocks):  # [i, f, a, o] blocks (H, ...) -> (4H, ...)
                return xp.stack([blocks[j].array for j in (2, 0, 1, 3)], axis=1).reshape(
                    (-1,) + blocks[0].shape[1:])
            layers = [(interleave(ws[:4]), interleave(ws[4:]),
                       interleave(bs[:4]) + interleave(bs[4:]))
                      for ws, bs in zip(self.net.lstm.ws, self.net.lstm.bs)]
            self._step_cache = (self.optimizer.t, layers)
        return self._step_cache[1]

    def step(self, ids, state):
        # One time step without NStepLSTM's per-call weight stacking and sequence
        # bookkeeping: about a third of the function calls of forward() on (B, 1).
        h, c = state
        new_h, new_c = [], []
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            out = self.net.embedding(self._ids(ids))  # (B, E)
            for k, (w_ih, w_hh, bias) in enumerate(self._step_weights()):
                c_k, out = F.lstm(c[k], F.linear(out, w_ih, bias) + F.linear(h[k], w_hh))
                new_h.append(out.array)
                new_c.append(c_k.array)
            logits = self.net.dense(out)  # (B, V)
        xp = self.chainer_device.xp
        return cuda.to_cpu(logits.array), (xp.stack(new_h), xp.stack(new_c))

    def _loss(self, x, y, state):
        logits, h, c = self.net(self._ids(x), *state)
        loss = F.softmax_cross_entropy(logits.reshape(-1, self.config.vocab_size),
                                       self._ids(y).reshape(-1))  # mean over B x T
        return loss, (h.array, c.array)  # raw arrays: the graph is cut (truncated BPTT)

    def loss_and_grads(self, x, y, state):
        with chainer.using_config("train", False):
            self.net.cleargrads()
            loss, state = self._loss(x, y, state)
            loss.backward()
        # The trained Parameters' gradients; the second bias is a constant, without one.
        grads = {name: _stack([p.grad for p in trained])
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
        self._step_cache = None
        rng = directory / "chainer_rng.npz"
        if rng.exists():
            with np.load(str(rng)) as saved:
                pos, has_gauss, gauss = saved["scalars"]
                np.random.set_state(("MT19937", saved["keys"], int(pos), int(has_gauss),
                                     float(gauss)))


MODEL = ChainerCharRNN  # what common.registry loads

if __name__ == "__main__":
    main(MODEL)

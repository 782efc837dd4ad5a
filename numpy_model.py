"""The framework-free reference: forward, backpropagation through time, clipping and Adam
in NumPy, written to be read. Every other framework is tested against it.

    python numpy_model.py train --num-epochs 1 --max-steps 200
    python numpy_model.py generate --checkpoint-path checkpoints/pytorch_model.safetensors

It runs in both environments (it needs only NumPy and safetensors), float32
throughout like every framework (SPEC section 4).
"""

from common.bootstrap import early_setup

early_setup(__file__)  # before NumPy loads its BLAS thread pool

from pathlib import Path

import numpy as np

from common.checkpoint import load_arrays_and_adam, save_arrays_and_adam
from common.cli import main
from common.config import ModelConfig, OptimConfig
from common.framework import CPU, CharRNN, Device, NumpyState, choose_device
from common.weights import Weights

# ---------------------------------------------------------------------------------------
# LSTM maths, one layer at a time. Shapes: B batch_size, T seq_len, H rnn_size.
# ---------------------------------------------------------------------------------------


def sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """1 / (1 + exp(-z)) where z >= 0 and exp(z) / (1 + exp(z)) below, so exp() never
    overflows. Both from e = exp(-|z|) <= 1: the numerator max(e, z >= 0) is 1 or e.
    Branch-free (boolean gathers, np.where or where= cost 5-30x the arithmetic)."""
    e = np.exp(np.negative(np.abs(z)))
    d = 1.0 + e
    return np.divide(np.maximum(e, z >= 0, out=e), d, out=out)


def lstm_cell(z, c, gates, tanh_c, h_out, c_out):
    """One step from the pre-activations z (B, 4H) and the cell c (B, H) before it.

    Writes the activated gates i, f, g, o into `gates` (B, 4H) and tanh of the new cell
    into `tanh_c`, both kept for the backward pass, and the new state into h_out, c_out.
    """
    H = c.shape[1]
    sigmoid(z, out=gates)  # i, f, o (the g columns are overwritten next)
    np.tanh(z[:, 2 * H:3 * H], out=gates[:, 2 * H:3 * H])
    i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    np.multiply(f, c, out=c_out)
    c_out += i * g  # c = f * c + i * g
    np.tanh(c_out, out=tanh_c)
    np.multiply(o, tanh_c, out=h_out)


def lstm_forward(x, h, c, w_ih, w_hh, bias):
    """One LSTM layer over a sequence, time-major.

    x (T, B, in), h and c (B, H); weights canonical (4H, in), (4H, H), (4H,), gate
    order i, f, g, o. Returns outputs (T, B, H), final (h, c), and the cache that
    `lstm_backward` needs. Time-major, so each step reads and writes contiguous
    (B, .) blocks: batch-major slices [:, t] are B rows 128 KiB apart, which fall in
    the same cache sets (one layer's forward loop: 17 ms batch-major, 14 time-major).
    """
    T, B, _ = x.shape
    H = h.shape[1]
    # The input projection of every step in one GEMM: (T, B, 4H).
    x_proj = (x.reshape(T * B, -1) @ w_ih.T + bias).reshape(T, B, 4 * H)
    hs = np.empty((T + 1, B, H), np.float32)  # hs[t] enters step t, hs[t + 1] leaves it
    cs = np.empty((T + 1, B, H), np.float32)
    tanh_cs = np.empty((T, B, H), np.float32)
    gates = np.empty((T, B, 4 * H), np.float32)  # activated i, f, g, o
    z = np.empty((B, 4 * H), np.float32)
    hs[0], cs[0] = h, c
    for t in range(T):
        np.matmul(hs[t], w_hh.T, out=z)
        z += x_proj[t]
        lstm_cell(z, cs[t], gates[t], tanh_cs[t], hs[t + 1], cs[t + 1])
    return hs[1:], (hs[T].copy(), cs[T].copy()), (x, hs[:-1], cs[:-1], tanh_cs, gates)


def lstm_backward(d_out, cache, w_ih, w_hh):
    """Backpropagation through time for one layer, time-major like `lstm_forward`.

    d_out (T, B, H) is the loss gradient w.r.t. the layer's outputs. The state
    entering the sequence is a constant (truncated BPTT), so no gradient flows
    past t = 0. Returns d_x (T, B, in) and the weight gradients.
    """
    x, h_prev, c_prev, tanh_cs, gates = cache
    T, B, H = d_out.shape
    # The gates' local derivatives, for every step at once: 1 - i, 1 - f, 1 - g^2, 1 - o.
    slopes = 1.0 - gates
    g = gates[..., 2 * H:3 * H]
    slopes[..., 2 * H:3 * H] = 1.0 - g * g
    d_tanh_c = 1.0 - tanh_cs * tanh_cs
    d_z = np.empty((T, B, 4 * H), np.float32)
    d_h = np.empty((B, H), np.float32)
    d_c = np.empty((B, H), np.float32)
    d_h_next = np.zeros((B, H), np.float32)
    d_c_next = np.zeros((B, H), np.float32)
    for t in reversed(range(T)):
        i, f, g, o = (gates[t, :, k * H:(k + 1) * H] for k in range(4))
        d_i, d_f, d_g, d_o = (d_z[t, :, k * H:(k + 1) * H] for k in range(4))
        s_i, s_f, s_g, s_o = (slopes[t, :, k * H:(k + 1) * H] for k in range(4))
        np.add(d_out[t], d_h_next, out=d_h)
        # d_c = d_h * o * (1 - tanh(c)^2) + d_c_next, multiplied left to right.
        np.multiply(d_h, o, out=d_c)
        d_c *= d_tanh_c[t]
        d_c += d_c_next
        # Gradients w.r.t. the pre-activations z of each gate, e.g. d_c * g * i * (1 - i).
        np.multiply(d_c, g, out=d_i)
        d_i *= i
        d_i *= s_i
        np.multiply(d_c, c_prev[t], out=d_f)
        d_f *= f
        d_f *= s_f
        np.multiply(d_c, i, out=d_g)
        d_g *= s_g
        np.multiply(d_h, tanh_cs[t], out=d_o)
        d_o *= o
        d_o *= s_o
        np.matmul(d_z[t], w_hh, out=d_h_next)
        np.multiply(d_c, f, out=d_c_next)
    # The weight gradients sum over all T * B rows in one GEMM each.
    flat_dz = d_z.reshape(T * B, 4 * H)
    d_w_ih = flat_dz.T @ x.reshape(T * B, -1)
    d_w_hh = flat_dz.T @ h_prev.reshape(T * B, H)
    d_bias = flat_dz.sum(axis=0)
    d_x = (flat_dz @ w_ih).reshape(T, B, -1)
    return d_x, d_w_ih, d_w_hh, d_bias


def softmax_cross_entropy(logits, y):
    """Mean loss in nats and its gradient w.r.t. logits (B, T, V)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probs = exp / exp.sum(axis=-1, keepdims=True)
    n = y.size
    picked = np.take_along_axis(probs, y[..., None], axis=-1)[..., 0]
    with np.errstate(divide="ignore"):  # log(0) = -inf: the loop reports a non-finite loss
        loss = -np.mean(np.log(picked, dtype=np.float64))
    d_logits = probs
    np.put_along_axis(d_logits, y[..., None], picked[..., None] - 1.0, axis=-1)
    return float(loss), (d_logits / n).astype(np.float32)


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class NumpyCharRNN(NumpyState, CharRNN):
    framework = "numpy"

    def __init__(self, config: ModelConfig, weights: Weights, optim: OptimConfig,
                 device: Device = CPU, seed: int = 0):
        super().__init__(config, weights, optim, device, seed)
        self.params = {name: a.astype(np.float32).copy() for name, a in weights.items()}
        self.adam_m = {name: np.zeros_like(a) for name, a in self.params.items()}
        self.adam_v = {name: np.zeros_like(a) for name, a in self.params.items()}
        self.adam_t = 0
        self.rng = np.random.default_rng(seed)  # dropout masks

    @classmethod
    def versions(cls):
        return {"numpy": np.__version__}

    @classmethod
    def setup_device(cls, device, threads):
        # Threads were applied to BLAS by early_setup, before NumPy loaded.
        return choose_device(device, [], "the NumPy reference runs on the CPU only "
                                         "(use --device cpu, or a framework with a GPU build)")

    # ---- compute -----------------------------------------------------------------
    def _dropout(self, a, train):
        """Inverted dropout: keep with probability 1 - p, scale kept units by 1 / (1 - p)."""
        p = self.config.drop_rate
        if not train or p == 0.0:
            return a, None
        T, B, n = a.shape
        # Drawn batch-major (B, T, n), so the masks do not depend on the layout here.
        mask = np.empty(a.shape, np.float32)
        np.greater_equal(self.rng.random((B, T, n)).transpose(1, 0, 2), p, out=mask)
        mask /= np.float32(1.0 - p)
        return a * mask, mask

    def _forward(self, x, state, train):
        """Logits (T, B, V) time-major, new state, and everything backward needs."""
        p = self.params
        h0, c0 = state
        out, mask = self._dropout(p["embedding"][x.T], train)  # (T, B, E)
        layers, new_h, new_c = [], [], []
        for k in range(self.config.num_layers):
            out, (h, c), cache = lstm_forward(out, h0[k], c0[k], p[f"lstm.{k}.w_ih"],
                                              p[f"lstm.{k}.w_hh"], p[f"lstm.{k}.bias"])
            layers.append((cache, mask))
            out, mask = self._dropout(out, train)  # (T, B, H)
            new_h.append(h)
            new_c.append(c)
        T, B, H = out.shape
        logits = out.reshape(T * B, H) @ p["dense.w"].T + p["dense.b"]
        return logits.reshape(T, B, -1), (np.stack(new_h), np.stack(new_c)), (layers, out, mask)

    def _backward(self, x, d_logits, saved):
        """Canonical gradients from d_logits (T, B, V)."""
        p = self.params
        layers, top, top_mask = saved
        V, H = p["dense.w"].shape
        flat_d_logits = d_logits.reshape(-1, V)
        grads = {"dense.w": flat_d_logits.T @ top.reshape(-1, H),
                 "dense.b": flat_d_logits.sum(axis=0)}
        d_out = (flat_d_logits @ p["dense.w"]).reshape(top.shape)  # (T, B, H)
        mask = top_mask
        for k in reversed(range(self.config.num_layers)):
            if mask is not None:
                d_out = d_out * mask
            cache, mask = layers[k]
            d_out, grads[f"lstm.{k}.w_ih"], grads[f"lstm.{k}.w_hh"], grads[f"lstm.{k}.bias"] = (
                lstm_backward(d_out, cache, p[f"lstm.{k}.w_ih"], p[f"lstm.{k}.w_hh"]))
        if mask is not None:
            d_out = d_out * mask
        d_embedding = np.zeros_like(p["embedding"])
        np.add.at(d_embedding, x.T.ravel(), d_out.reshape(-1, d_out.shape[-1]))
        grads["embedding"] = d_embedding
        return {name: g.astype(np.float32) for name, g in grads.items()}

    def forward(self, x, state):
        logits, state, _ = self._forward(np.asarray(x, np.int64), state, train=False)
        return np.ascontiguousarray(logits.transpose(1, 0, 2)), state

    def step(self, ids, state):
        """`forward` of one character, without the sequence bookkeeping: the same
        operations on the same operands (so the same numbers)."""
        p = self.params
        h0, c0 = state
        h, c = np.empty_like(h0), np.empty_like(c0)
        x = p["embedding"][np.asarray(ids, np.int64)]  # (B, E)
        for k in range(self.config.num_layers):
            z = x @ p[f"lstm.{k}.w_ih"].T + p[f"lstm.{k}.bias"]
            z += h0[k] @ p[f"lstm.{k}.w_hh"].T  # (B, 4H)
            lstm_cell(z, c0[k], np.empty_like(z), np.empty_like(c[k]), h[k], c[k])
            x = h[k]
        return x @ p["dense.w"].T + p["dense.b"], (h, c)

    def loss_and_grads(self, x, y, state):
        x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
        logits, state, saved = self._forward(x, state, train=False)
        loss, d_logits = softmax_cross_entropy(logits, y.T)
        return loss, self._backward(x, d_logits, saved), state

    def train_step(self, x, y, state):
        x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
        logits, state, saved = self._forward(x, state, train=True)
        loss, d_logits = softmax_cross_entropy(logits, y.T)
        grads = self._backward(x, d_logits, saved)
        self._apply_adam(clip_by_global_norm(grads, self.optim.clip_norm))
        return loss, state

    def _apply_adam(self, grads):
        """Adam as in Kingma & Ba with PyTorch's epsilon placement (SPEC section 4)."""
        o = self.optim
        self.adam_t += 1
        correction1 = 1.0 - o.beta1 ** self.adam_t
        correction2 = 1.0 - o.beta2 ** self.adam_t
        for name, g in grads.items():
            m, v = self.adam_m[name], self.adam_v[name]
            m *= np.float32(o.beta1)
            m += np.float32(1.0 - o.beta1) * g
            v *= np.float32(o.beta2)
            v += np.float32(1.0 - o.beta2) * g * g
            denom = np.sqrt(v) / np.float32(np.sqrt(correction2)) + np.float32(o.eps)
            self.params[name] -= np.float32(o.learning_rate / correction1) * m / denom

    # ---- weights and checkpoints -------------------------------------------------------
    def get_weights(self):
        return {name: a.copy() for name, a in self.params.items()}

    def save_native(self, directory: Path):
        save_arrays_and_adam(directory / "numpy_model.safetensors", self.params, self.adam_m,
                             self.adam_v, self.adam_t, self.rng.bit_generator.state)

    def load_native(self, directory: Path):
        self.params, self.adam_m, self.adam_v, self.adam_t, rng_state = load_arrays_and_adam(
            directory / "numpy_model.safetensors", self.params)
        self.rng.bit_generator.state = rng_state


def clip_by_global_norm(grads: Weights, clip_norm: float) -> Weights:
    """Scale all gradients by min(1, clip_norm / ||all gradients||_2) (SPEC section 4)."""
    norm = np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
    if norm <= clip_norm:
        return grads
    scale = np.float32(clip_norm / norm)
    return {name: g * scale for name, g in grads.items()}


MODEL = NumpyCharRNN  # what common.registry loads

if __name__ == "__main__":
    main(MODEL)

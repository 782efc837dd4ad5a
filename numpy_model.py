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


def sigmoid(z: np.ndarray) -> np.ndarray:
    # Two branches keep exp() from overflowing for large |z|.
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def lstm_forward(x, h, c, w_ih, w_hh, bias):
    """One LSTM layer over a sequence.

    x (B, T, in), h and c (B, H); weights canonical (4H, in), (4H, H), (4H,),
    gate order i, f, g, o. Returns outputs (B, T, H), final (h, c), and the
    cache that `lstm_backward` needs.
    """
    B, T, _ = x.shape
    H = h.shape[1]
    # The input projection of every step at once: (B, T, 4H).
    x_proj = x @ w_ih.T + bias
    hs = np.empty((B, T, H), np.float32)
    cs = np.empty((B, T, H), np.float32)
    gates = np.empty((B, T, 4 * H), np.float32)  # activated i, f, g, o
    h_prev, c_prev = [h], [c]
    for t in range(T):
        z = x_proj[:, t] + h @ w_hh.T  # (B, 4H)
        i, f = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H])
        g, o = np.tanh(z[:, 2 * H:3 * H]), sigmoid(z[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        gates[:, t] = np.concatenate([i, f, g, o], axis=1)
        hs[:, t], cs[:, t] = h, c
        h_prev.append(h)
        c_prev.append(c)
    cache = (x, np.stack(h_prev[:-1], 1), np.stack(c_prev[:-1], 1), cs, gates)
    return hs, (h, c), cache


def lstm_backward(d_out, cache, w_ih, w_hh):
    """Backpropagation through time for one layer.

    d_out (B, T, H) is the loss gradient w.r.t. the layer's outputs. The state
    entering the sequence is a constant (truncated BPTT), so no gradient flows
    past t = 0. Returns d_x (B, T, in) and the weight gradients.
    """
    x, h_prev, c_prev, cs, gates = cache
    B, T, H = d_out.shape
    d_z = np.empty((B, T, 4 * H), np.float32)
    d_h_next = np.zeros((B, H), np.float32)
    d_c_next = np.zeros((B, H), np.float32)
    for t in reversed(range(T)):
        i, f = gates[:, t, :H], gates[:, t, H:2 * H]
        g, o = gates[:, t, 2 * H:3 * H], gates[:, t, 3 * H:]
        tanh_c = np.tanh(cs[:, t])
        d_h = d_out[:, t] + d_h_next
        d_c = d_h * o * (1.0 - tanh_c * tanh_c) + d_c_next
        # Gradients w.r.t. the pre-activations z of each gate.
        d_z[:, t, :H] = d_c * g * i * (1.0 - i)
        d_z[:, t, H:2 * H] = d_c * c_prev[:, t] * f * (1.0 - f)
        d_z[:, t, 2 * H:3 * H] = d_c * i * (1.0 - g * g)
        d_z[:, t, 3 * H:] = d_h * tanh_c * o * (1.0 - o)
        d_h_next = d_z[:, t] @ w_hh
        d_c_next = d_c * f
    flat_dz = d_z.reshape(B * T, 4 * H)
    d_w_ih = flat_dz.T @ x.reshape(B * T, -1)
    d_w_hh = flat_dz.T @ h_prev.reshape(B * T, H)
    d_bias = flat_dz.sum(axis=0)
    d_x = d_z @ w_ih
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
        mask = (self.rng.random(a.shape) >= p).astype(np.float32) / np.float32(1.0 - p)
        return a * mask, mask

    def _forward(self, x, state, train):
        """Logits (B, T, V), new state, and everything backward needs."""
        p = self.params
        h0, c0 = state
        out, mask = self._dropout(p["embedding"][x], train)  # (B, T, E)
        layers, new_h, new_c = [], [], []
        for k in range(self.config.num_layers):
            out, (h, c), cache = lstm_forward(out, h0[k], c0[k], p[f"lstm.{k}.w_ih"],
                                              p[f"lstm.{k}.w_hh"], p[f"lstm.{k}.bias"])
            layers.append((cache, mask))
            out, mask = self._dropout(out, train)  # (B, T, H)
            new_h.append(h)
            new_c.append(c)
        logits = out @ p["dense.w"].T + p["dense.b"]  # (B, T, V)
        return logits, (np.stack(new_h), np.stack(new_c)), (layers, out, mask)

    def _backward(self, x, d_logits, saved):
        p = self.params
        layers, top, top_mask = saved
        grads = {"dense.w": np.einsum("btv,bth->vh", d_logits, top),
                 "dense.b": d_logits.sum(axis=(0, 1))}
        d_out = d_logits @ p["dense.w"]  # (B, T, H)
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
        np.add.at(d_embedding, x.ravel(), d_out.reshape(-1, d_out.shape[-1]))
        grads["embedding"] = d_embedding
        return {name: g.astype(np.float32) for name, g in grads.items()}

    def forward(self, x, state):
        logits, state, _ = self._forward(np.asarray(x, np.int64), state, train=False)
        return logits, state

    def loss_and_grads(self, x, y, state):
        x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
        logits, state, saved = self._forward(x, state, train=False)
        loss, d_logits = softmax_cross_entropy(logits, y)
        return loss, self._backward(x, d_logits, saved), state

    def train_step(self, x, y, state):
        x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
        logits, state, saved = self._forward(x, state, train=True)
        loss, d_logits = softmax_cross_entropy(logits, y)
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

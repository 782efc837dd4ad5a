"""The framework-free reference: forward, backpropagation through time and clipping in
NumPy, written to be read; the optimisers (Adam, RMSprop, SGD; SPEC section 9) and the
penalties' gradient are the formulas of charrnn.common.optim, applied to NumPy arrays.
Every other framework is tested against it, for every cell (LSTM, GRU, vanilla RNN;
section 8) and every optimiser.

    python numpy_model.py train --num-epochs 1 --max-steps 200
    python numpy_model.py generate --checkpoint-path checkpoints/pytorch_model.safetensors

It runs in both environments (it needs only NumPy and safetensors), float32
throughout like every framework (SPEC section 4). With `--precision bf16-mixed` it is
the definition of SPEC section 12: `q`, applied to both operands of every matrix
product of the forward and backward passes, rounds them to bfloat16 (ties to even);
the products of two bf16 values are exact in float32 and NumPy's float32 GEMM sums
them in float32. Under fp32, `q` is the identity and the operations are those of
fp32 alone, bit for bit.
"""


from pathlib import Path

import numpy as np

from charrnn.common.checkpoint import load_arrays_and_slots, save_arrays_and_slots
from charrnn.common.config import BF16_MIXED, FP32, ModelConfig, OptimConfig
from charrnn.common.framework import CPU, CharRNN, Device, NumpyState, choose_device
from charrnn.common.optim import penalty_grad, update
from charrnn.common.precision import identity, operand_rounding
from charrnn.common.weights import Weights

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


def lstm_forward(x, h, c, w_ih, w_hh, bias, q=identity):
    """One LSTM layer over a sequence, time-major; `q` rounds every product's operands
    (SPEC section 12: the identity under fp32).

    x (T, B, in), h and c (B, H); weights canonical (4H, in), (4H, H), (4H,), gate
    order i, f, g, o. Returns outputs (T, B, H), final (h, c), and the cache that
    `lstm_backward` needs. Time-major, so each step reads and writes contiguous
    (B, .) blocks: batch-major slices [:, t] are B rows 128 KiB apart, which fall in
    the same cache sets (one layer's forward loop: 17 ms batch-major, 14 time-major).
    """
    T, B, _ = x.shape
    H = h.shape[1]
    # The input projection of every step in one GEMM: (T, B, 4H).
    x_proj = (q(x.reshape(T * B, -1)) @ q(w_ih).T + bias).reshape(T, B, 4 * H)
    w_hh = q(w_hh)  # rounded once, not every step
    hs = np.empty((T + 1, B, H), np.float32)  # hs[t] enters step t, hs[t + 1] leaves it
    cs = np.empty((T + 1, B, H), np.float32)
    tanh_cs = np.empty((T, B, H), np.float32)
    gates = np.empty((T, B, 4 * H), np.float32)  # activated i, f, g, o
    z = np.empty((B, 4 * H), np.float32)
    hs[0], cs[0] = h, c
    for t in range(T):
        np.matmul(q(hs[t]), w_hh.T, out=z)
        z += x_proj[t]
        lstm_cell(z, cs[t], gates[t], tanh_cs[t], hs[t + 1], cs[t + 1])
    return hs[1:], (hs[T].copy(), cs[T].copy()), (x, hs[:-1], cs[:-1], tanh_cs, gates)


def lstm_backward(d_out, cache, w_ih, w_hh, q=identity):
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
    w_hh = q(w_hh)
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
        np.matmul(q(d_z[t]), w_hh, out=d_h_next)
        np.multiply(d_c, f, out=d_c_next)
    # The weight gradients sum over all T * B rows in one GEMM each.
    flat_dz = d_z.reshape(T * B, 4 * H)
    q_dz = q(flat_dz)
    d_w_ih = q_dz.T @ q(x.reshape(T * B, -1))
    d_w_hh = q_dz.T @ q(h_prev.reshape(T * B, H))
    d_bias = flat_dz.sum(axis=0)  # a sum, not a product: float32 operands
    d_x = (q_dz @ q(w_ih)).reshape(T, B, -1)
    return d_x, d_w_ih, d_w_hh, d_bias


def gru_cell(xp, hp, h, gates, h_out):
    """One GRU step (SPEC section 8) from the input and recurrent projections xp and hp
    (B, 3H), biases included, and h (B, H): the activated gates r, z, n go into `gates`
    (B, 3H), kept for the backward pass, and the new state into h_out."""
    H = h.shape[1]
    sigmoid(xp[:, :2 * H] + hp[:, :2 * H], out=gates[:, :2 * H])  # r, z
    r, z, n = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
    np.tanh(xp[:, 2 * H:] + r * hp[:, 2 * H:], out=n)  # n = tanh(x_n + r * (W_hn h + b_hn))
    np.multiply(1.0 - z, n, out=h_out)
    h_out += z * h  # h' = (1 - z) * n + z * h


def gru_forward(x, h, w_ih, w_hh, b_ih, b_hh, q=identity):
    """One GRU layer over a sequence, time-major, like `lstm_forward`: x (T, B, in),
    h (B, H), weights canonical (3H, in), (3H, H), (3H,), (3H,), gate order r, z, n."""
    T, B, _ = x.shape
    H = h.shape[1]
    x_proj = (q(x.reshape(T * B, -1)) @ q(w_ih).T + b_ih).reshape(T, B, 3 * H)
    w_hh = q(w_hh)
    hs = np.empty((T + 1, B, H), np.float32)
    gates = np.empty((T, B, 3 * H), np.float32)  # activated r, z, n
    hp_n = np.empty((T, B, H), np.float32)  # W_hn h + b_hn, which r multiplies
    hs[0] = h
    for t in range(T):
        hp = q(hs[t]) @ w_hh.T + b_hh
        hp_n[t] = hp[:, 2 * H:]
        gru_cell(x_proj[t], hp, hs[t], gates[t], hs[t + 1])
    return hs[1:], hs[T].copy(), (x, hs[:-1], gates, hp_n)


def gru_backward(d_out, cache, w_ih, w_hh, q=identity):
    """BPTT through one GRU layer. Returns d_x and the gradients of w_ih, w_hh, b_ih, b_hh."""
    x, h_prev, gates, hp_n = cache
    T, B, H = d_out.shape
    d_xp = np.empty((T, B, 3 * H), np.float32)  # w.r.t. W_i x + b_i, gates r, z, n
    d_hp = np.empty((T, B, 3 * H), np.float32)  # w.r.t. W_h h + b_h
    d_h_next = np.zeros((B, H), np.float32)
    w_hh = q(w_hh)
    for t in reversed(range(T)):
        r, z, n = gates[t, :, :H], gates[t, :, H:2 * H], gates[t, :, 2 * H:]
        d_h = d_out[t] + d_h_next
        d_an = d_h * (1.0 - z) * (1.0 - n * n)  # through n = tanh(a_n)
        d_xp[t, :, 2 * H:] = d_an
        d_hp[t, :, 2 * H:] = d_an * r
        d_az = d_h * (h_prev[t] - n) * z * (1.0 - z)  # through z = sigmoid(a_z)
        d_xp[t, :, H:2 * H] = d_az
        d_hp[t, :, H:2 * H] = d_az
        d_ar = d_an * hp_n[t] * r * (1.0 - r)  # through r = sigmoid(a_r)
        d_xp[t, :, :H] = d_ar
        d_hp[t, :, :H] = d_ar
        d_h_next = d_h * z + q(d_hp[t]) @ w_hh
    flat_dx, flat_dh = d_xp.reshape(T * B, 3 * H), d_hp.reshape(T * B, 3 * H)
    q_dx, q_dh = q(flat_dx), q(flat_dh)
    return ((q_dx @ q(w_ih)).reshape(T, B, -1), q_dx.T @ q(x.reshape(T * B, -1)),
            q_dh.T @ q(h_prev.reshape(T * B, H)), flat_dx.sum(axis=0), flat_dh.sum(axis=0))


def rnn_forward(x, h, w_ih, w_hh, bias, q=identity):
    """One vanilla RNN layer, h' = tanh(W_ih x + W_hh h + bias), time-major."""
    T, B, _ = x.shape
    H = h.shape[1]
    x_proj = (q(x.reshape(T * B, -1)) @ q(w_ih).T + bias).reshape(T, B, H)
    w_hh = q(w_hh)
    hs = np.empty((T + 1, B, H), np.float32)
    hs[0] = h
    for t in range(T):
        np.tanh(q(hs[t]) @ w_hh.T + x_proj[t], out=hs[t + 1])
    return hs[1:], hs[T].copy(), (x, hs)


def rnn_backward(d_out, cache, w_ih, w_hh, q=identity):
    """BPTT through one RNN layer. Returns d_x and the gradients of w_ih, w_hh, bias."""
    x, hs = cache
    T, B, H = d_out.shape
    d_a = np.empty((T, B, H), np.float32)  # w.r.t. the pre-activation
    d_h_next = np.zeros((B, H), np.float32)
    w_hh = q(w_hh)
    for t in reversed(range(T)):
        np.multiply(d_out[t] + d_h_next, 1.0 - hs[t + 1] * hs[t + 1], out=d_a[t])
        d_h_next = q(d_a[t]) @ w_hh
    flat = d_a.reshape(T * B, H)
    q_flat = q(flat)
    return ((q_flat @ q(w_ih)).reshape(T, B, -1), q_flat.T @ q(x.reshape(T * B, -1)),
            q_flat.T @ q(hs[:-1].reshape(T * B, H)), flat.sum(axis=0))


def layer_forward(cell, x, h, c, p, q=identity):
    """One layer of any cell: outputs (T, B, H), the new (h, c) and the backward cache.
    `p` holds the layer's canonical arrays by short name (w_ih, w_hh, bias or b_ih, b_hh).
    GRU and RNN have no cell state: their c is all zeros (SPEC section 10)."""
    if cell == "lstm":
        return lstm_forward(x, h, c, p["w_ih"], p["w_hh"], p["bias"], q)
    if cell == "gru":
        out, h, cache = gru_forward(x, h, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], q)
    else:
        out, h, cache = rnn_forward(x, h, p["w_ih"], p["w_hh"], p["bias"], q)
    return out, (h, np.zeros_like(h)), cache


def layer_backward(cell, d_out, cache, p, q=identity):
    """d_x and the layer's gradients by short name, the inverse of `layer_forward`."""
    backward = {"lstm": lstm_backward, "gru": gru_backward, "rnn": rnn_backward}[cell]
    d_x, *grads = backward(d_out, cache, p["w_ih"], p["w_hh"], q)
    names = ("w_ih", "w_hh", "b_ih", "b_hh") if cell == "gru" else ("w_ih", "w_hh", "bias")
    return d_x, dict(zip(names, grads))


def layer_step(cell, x, h, c, p):
    """One time step of one layer for generation: x (B, in), h and c (B, H) -> new (h, c).
    The same operations as `layer_forward` on the same operands, so the same numbers."""
    if cell == "lstm":
        z = x @ p["w_ih"].T + p["bias"]
        z += h @ p["w_hh"].T  # (B, 4H)
        h_out, c_out = np.empty_like(h), np.empty_like(c)
        lstm_cell(z, c, np.empty_like(z), np.empty_like(c), h_out, c_out)
        return h_out, c_out
    if cell == "gru":
        xp = x @ p["w_ih"].T + p["b_ih"]
        h_out = np.empty_like(h)
        gru_cell(xp, h @ p["w_hh"].T + p["b_hh"], h, np.empty_like(xp), h_out)
        return h_out, c
    return np.tanh(h @ p["w_hh"].T + (x @ p["w_ih"].T + p["bias"])), c


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
    precisions = (FP32, BF16_MIXED)  # bf16-mixed: the emulation that defines it
    data_parallel_refusal = ("the NumPy reference is one process by design: it has no "
                             "collective communication to average gradients with")

    def __init__(self, config: ModelConfig, weights: Weights, optim: OptimConfig,
                 device: Device = CPU, seed: int = 0):
        super().__init__(config, weights, optim, device, seed)
        self.params = {name: a.astype(np.float32).copy() for name, a in weights.items()}
        # The optimiser's per-parameter state (Adam's m and v, RMSprop's v, SGD's b),
        # zero at the start, and the number of updates made.
        self.slots = {slot: {name: np.zeros_like(a) for name, a in self.params.items()}
                      for slot in optim.slots()}
        self.count = 0
        self.learning_rate = optim.learning_rate  # set_learning_rate changes it
        self.rng = np.random.default_rng(seed)  # dropout masks
        # Applied to the operands of every product of training and evaluation (section
        # 12); generation (`step`, `steps`) stays float32 whatever the precision.
        self.q = operand_rounding(optim.precision)

    @classmethod
    def versions(cls):
        return {"numpy": np.__version__}

    @classmethod
    def setup_device(cls, device, threads):
        # Threads were applied to BLAS by early_setup, before NumPy loaded.
        return choose_device(device, [], "the NumPy reference runs on the CPU only "
                                         "(use --device cpu, or a framework with a GPU build)")

    # ---- compute -----------------------------------------------------------------
    def _layer(self, k):
        """Layer k's canonical arrays by short name (w_ih, w_hh, bias or b_ih, b_hh)."""
        prefix = self.config.layer(k) + "."
        return {n[len(prefix):]: a for n, a in self.params.items() if n.startswith(prefix)}

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
            out, (h, c), cache = layer_forward(self.config.cell, out, h0[k], c0[k],
                                               self._layer(k), self.q)
            layers.append((cache, mask))
            out, mask = self._dropout(out, train)  # (T, B, H)
            new_h.append(h)
            new_c.append(c)
        T, B, H = out.shape
        logits = self.q(out.reshape(T * B, H)) @ self.q(p["dense.w"]).T + p["dense.b"]
        return logits.reshape(T, B, -1), (np.stack(new_h), np.stack(new_c)), (layers, out, mask)

    def _backward(self, x, d_logits, saved):
        """Canonical gradients of the whole objective (the cross-entropy whose gradient
        w.r.t. the logits is d_logits (T, B, V), plus the penalties)."""
        p = self.params
        layers, top, top_mask = saved
        V, H = p["dense.w"].shape
        flat_d_logits = d_logits.reshape(-1, V)
        q_d_logits = self.q(flat_d_logits)
        grads = {"dense.w": q_d_logits.T @ self.q(top.reshape(-1, H)),
                 "dense.b": flat_d_logits.sum(axis=0)}
        d_out = (q_d_logits @ self.q(p["dense.w"])).reshape(top.shape)  # (T, B, H)
        mask = top_mask
        for k in reversed(range(self.config.num_layers)):
            if mask is not None:
                d_out = d_out * mask
            cache, mask = layers[k]
            d_out, layer_grads = layer_backward(self.config.cell, d_out, cache, self._layer(k),
                                                self.q)
            grads |= {f"{self.config.layer(k)}.{n}": g for n, g in layer_grads.items()}
        if mask is not None:
            d_out = d_out * mask
        d_embedding = np.zeros_like(p["embedding"])
        np.add.at(d_embedding, x.T.ravel(), d_out.reshape(-1, d_out.shape[-1]))
        grads["embedding"] = d_embedding
        grads = {name: g.astype(np.float32) for name, g in grads.items()}
        return self._add_penalty_grads(grads)

    def _add_penalty_grads(self, grads):
        """+ l1 * sign(W) + 2 * l2 * W on the penalised kernels (section 9; sign(0) = 0)."""
        o = self.optim
        if not o.penalised:
            return grads
        for name in self.config.kernel_names():
            grads[name] = grads[name] + penalty_grad(np, self.params[name], o.l1, o.l2,
                                                     np.float32)
        return grads

    def forward(self, x, state):
        logits, state, _ = self._forward(np.asarray(x, np.int64), state, train=False)
        return np.ascontiguousarray(logits.transpose(1, 0, 2)), state

    def step(self, ids, state):
        """`forward` of one character, without the sequence bookkeeping: the same
        operations on the same operands (so the same numbers)."""
        return self._step(ids, state, self._layers())

    def steps(self, ids, state, count, choose):
        # The loop over `step` with the layers' arrays looked up once, not a character
        # (the lookup was a sixth of the step).
        layers = self._layers()
        for t in range(count):
            logits, state = self._step(ids, state, layers)
            ids = choose(logits, t)
        return state

    def _layers(self):
        return [self._layer(k) for k in range(self.config.num_layers)]

    def _step(self, ids, state, layers):
        p = self.params
        h0, c0 = state
        h, c = np.empty_like(h0), np.empty_like(c0)
        x = p["embedding"][np.asarray(ids, np.int64)]  # (B, E)
        for k, layer in enumerate(layers):
            h[k], c[k] = layer_step(self.config.cell, x, h0[k], c0[k], layer)
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
        self._update(clip_by_global_norm(grads, self.optim.clip_norm))
        return loss, state  # the cross-entropy: the penalty is logged on its own

    def set_learning_rate(self, learning_rate):
        self.learning_rate = learning_rate

    def _update(self, grads):
        """One optimiser step on the clipped gradients (SPEC sections 4 and 9), the
        formulas of charrnn.common.optim written back in place."""
        self.count += 1
        for name, g in grads.items():
            slots = {slot: values[name] for slot, values in self.slots.items()}
            param, new_slots = update(np, self.optim, self.params[name], g, slots, self.count,
                                      self.learning_rate, np.float32)
            self.params[name][...] = param
            for slot, a in new_slots.items():
                slots[slot][...] = a

    # ---- weights and checkpoints -------------------------------------------------------
    def get_weights(self):
        return {name: a.copy() for name, a in self.params.items()}

    def save_native(self, directory: Path):
        save_arrays_and_slots(directory / "numpy_model.safetensors", self.params, self.slots,
                              self.count, self.rng.bit_generator.state)

    def load_native(self, directory: Path):
        self.params, self.slots, self.count, rng_state = load_arrays_and_slots(
            directory / "numpy_model.safetensors", self.params)
        self.rng.bit_generator.state = rng_state


def clip_by_global_norm(grads: Weights, clip_norm: float) -> Weights:
    """Scale all gradients by min(1, clip_norm / ||all gradients||_2) (SPEC section 4)."""
    norm = np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
    if norm <= clip_norm:
        return grads
    scale = np.float32(clip_norm / norm)
    return {name: g * scale for name, g in grads.items()}


MODEL = NumpyCharRNN  # what charrnn.common.registry loads


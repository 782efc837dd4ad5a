"""TensorFlow 2 without Keras: variables in a `tf.Module`, the LSTM in TF ops, a compiled
train step with `tf.GradientTape`, global-norm clipping and Adam written out (SPEC section 4).

    python tf_model.py train --num-epochs 1
    python tf_model.py generate --seed "KING"

Kernels are held as (in, 4H), the transpose of the canonical layout, so every product
is x @ kernel; the gate order is the canonical i, f, g, o. Keras' Adam is not used
because it puts epsilon elsewhere (it adds eps to sqrt(v) before the bias correction).
"""

from common.bootstrap import early_setup

early_setup(__file__)  # before TensorFlow reads TF_NUM_*_THREADS

from pathlib import Path

import numpy as np
import tensorflow as tf

from common.cli import main
from common.config import ModelConfig, OptimConfig
from common.framework import CPU, CharRNN, Device, choose_device
from common.threads import set_tf_threads
from common.weights import Weights, in_out_layout

# jit_compile=True (XLA) measured slower on 2 CPU cores with the default spec, interleaved
# in one process (CPU time per train step): 160 ms with XLA against 113 ms as a plain graph
# for the tf.scan loop, 726 against 88 ms for the unrolled loop used here (XLA's CPU code for
# many small matmuls loses to TF's oneDNN kernels); the one-character step gained nothing
# measurable (0.40 against 0.32 ms, best of 5) for XLA's extra compile before the first one.
JIT_COMPILE = False

# ---------------------------------------------------------------------------------------
# Network. Shapes: B batch_size, T seq_len, E embedding_size, H rnn_size, V vocab_size.
# ---------------------------------------------------------------------------------------


def lstm_cell(z, c):
    """z (B, 4H) pre-activations i, f, g, o and c (B, H) -> new (h, c)."""
    i, f, g, o = tf.split(z, 4, axis=1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(c), c


def lstm_layer(x, h, c, w_ih, w_hh, bias, seq_len):
    """x (T*B, in) time-major rows, h and c (B, H) -> outputs (T*B, H) time-major, final h, c.

    The input projection of every step is one product; the time loop is a Python loop,
    unrolled when the function is traced (one trace per (B, T) shape). Measured on 2 cores
    against `tf.scan` (a while loop over TensorLists), interleaved in one process: 1.18-1.3x
    faster per train step, 88 against 110 ms CPU time (the scan's TensorListStack and
    ZerosLike accumulators, and 9 einsums, go away); a `tf.while_loop` reading a
    TensorArray was 1.10x, `tf.raw_ops.BlockLSTM` (fused, gates i, c, f, o) 0.68x.
    """
    x_proj = tf.split(tf.matmul(x, w_ih) + bias, seq_len, axis=0)  # T x (B, 4H)
    hs = []
    for z_x in x_proj:
        h, c = lstm_cell(z_x + tf.matmul(h, w_hh), c)
        hs.append(h)
    return tf.concat(hs, axis=0), h, c


class Net(tf.Module):
    """The trainable variables and the forward pass."""

    def __init__(self, config: ModelConfig, weights: Weights):
        super().__init__(name="char_rnn")
        self.config = config
        L = config.num_layers
        # Canonical names in a fixed order shared by the variables, the gradients and
        # Adam's moments (`params`).
        self.names = ["embedding", *(f"lstm.{k}.w_ih" for k in range(L)),
                      *(f"lstm.{k}.w_hh" for k in range(L)),
                      *(f"lstm.{k}.bias" for k in range(L)), "dense.w", "dense.b"]

        def variable(name, label):
            return tf.Variable(in_out_layout(name, weights[name]), name=label)

        self.embedding = variable("embedding", "embedding")  # (V, E)
        self.w_ih = [variable(f"lstm.{k}.w_ih", f"w_ih_{k}") for k in range(L)]  # (in, 4H)
        self.w_hh = [variable(f"lstm.{k}.w_hh", f"w_hh_{k}") for k in range(L)]  # (H, 4H)
        self.bias = [variable(f"lstm.{k}.bias", f"bias_{k}") for k in range(L)]  # (4H,)
        self.dense_w = variable("dense.w", "dense_w")  # (H, V)
        self.dense_b = variable("dense.b", "dense_b")  # (V,)
        self.params = [self.embedding, *self.w_ih, *self.w_hh, *self.bias,
                       self.dense_w, self.dense_b]

    def _dropout(self, a, seed, k):
        """Inverted dropout; `seed` (2,) int64 differs per step, k per site."""
        rate = self.config.drop_rate
        if seed is None or rate == 0.0:
            return a
        return tf.nn.experimental.stateless_dropout(a, rate, seed + tf.constant([0, k], tf.int64))

    def __call__(self, x, h, c, seed=None):
        """x (T, B) int32 TIME-MAJOR, h and c (L, B, H) -> logits (T, B, V), new h and c.

        Dropout is on only when `seed` is given (training)."""
        seq_len = x.shape[0]
        out = self._dropout(tf.gather(self.embedding, tf.reshape(x, [-1])), seed, 0)  # (T*B, E)
        new_h, new_c = [], []
        for k in range(self.config.num_layers):
            out, hk, ck = lstm_layer(out, h[k], c[k], self.w_ih[k], self.w_hh[k], self.bias[k],
                                     seq_len)
            out = self._dropout(out, seed, k + 1)  # (T*B, H)
            new_h.append(hk)
            new_c.append(ck)
        logits = tf.matmul(out, self.dense_w) + self.dense_b  # (T*B, V)
        return tf.reshape(logits, [seq_len, -1, logits.shape[-1]]), tf.stack(new_h), tf.stack(new_c)

    def step(self, ids, h, c):
        """ids (B,) -> logits (B, V): one character through each layer's cell, no scan."""
        out = tf.gather(self.embedding, ids)  # (B, E)
        new_h, new_c = [], []
        for k in range(self.config.num_layers):
            z = tf.matmul(out, self.w_ih[k]) + tf.matmul(h[k], self.w_hh[k]) + self.bias[k]
            out, ck = lstm_cell(z, c[k])
            new_h.append(out)
            new_c.append(ck)
        return tf.matmul(out, self.dense_w) + self.dense_b, tf.stack(new_h), tf.stack(new_c)


def mean_cross_entropy(logits, y):
    """logits (T, B, V), y (T, B) -> mean loss in nats."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))


class Adam(tf.Module):
    """Adam with PyTorch's epsilon placement:
    p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)."""

    def __init__(self, params, optim: OptimConfig):
        super().__init__(name="adam")
        self.optim = optim
        self.t = tf.Variable(0, dtype=tf.int64, trainable=False, name="t")
        self.m = [tf.Variable(tf.zeros_like(p), trainable=False, name="m") for p in params]
        self.v = [tf.Variable(tf.zeros_like(p), trainable=False, name="v") for p in params]

    def apply(self, params, grads):
        o = self.optim
        t = tf.cast(self.t.assign_add(1), tf.float64)
        # Bias corrections in float64, as the NumPy reference computes them.
        step_size = tf.cast(o.learning_rate / (1.0 - o.beta1 ** t), tf.float32)
        sqrt_c2 = tf.cast(tf.sqrt(1.0 - o.beta2 ** t), tf.float32)
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m.assign(o.beta1 * m + (1.0 - o.beta1) * g)
            v.assign(o.beta2 * v + (1.0 - o.beta2) * tf.square(g))
            p.assign_sub(step_size * m / (tf.sqrt(v) / sqrt_c2 + o.eps))


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class TFCharRNN(CharRNN):
    framework = "tensorflow"

    def __init__(self, config: ModelConfig, weights: Weights, optim: OptimConfig,
                 device: Device = CPU, seed: int = 0):
        super().__init__(config, weights, optim, device, seed)
        self.tf_device = f"/GPU:{device.index}" if device.is_gpu else "/CPU:0"
        L, H = config.num_layers, config.rnn_size
        with tf.device(self.tf_device):
            self.net = Net(config, {n: np.asarray(a, np.float32) for n, a in weights.items()})
            self.adam = Adam(self.net.params, optim)
        self.dropout_seed = tf.constant([seed, 0], tf.int64)
        # The sequence functions trace once per (B, T) shape: the unrolled time loop needs a
        # static T, and a static B drops the broadcast-gradient Sums of every elementwise op
        # (about 1,000 of them per step; 4% of a step's CPU time). The train loop has one shape.
        self._train = tf.function(self._train_fn, jit_compile=JIT_COMPILE)
        self._grads = tf.function(self._grads_fn, jit_compile=JIT_COMPILE)
        self._eval = tf.function(self._eval_fn, jit_compile=JIT_COMPILE)
        self._forward = tf.function(lambda x, h, c: self.net(x, h, c), jit_compile=JIT_COMPILE)
        # Generation calls the traced graph itself (a ConcreteFunction, any batch size): the
        # polymorphic tf.function's argument matching cost more than the graph, 0.42 against
        # 0.25 ms a character on a quiet moment of this shared machine.
        state = tf.TensorSpec([L, None, H], tf.float32)
        self._step = tf.function(self.net.step, jit_compile=JIT_COMPILE).get_concrete_function(
            tf.TensorSpec([None], tf.int32), state, state)

    @classmethod
    def versions(cls):
        return {"tensorflow": tf.__version__}

    @classmethod
    def setup_device(cls, device, threads):
        set_tf_threads(tf, threads)
        gpu_names = [tf.config.experimental.get_device_details(gpu).get("device_name", "GPU")
                     for gpu in tf.config.list_physical_devices("GPU")]
        return choose_device(device, gpu_names, "TensorFlow sees no GPU (a CPU-only "
                                                "tensorflow, or no CUDA driver; install "
                                                "tensorflow[and-cuda])")

    # ---- compiled functions: x, y (T, B) int32, time-major; h, c (L, B, H) ---------------
    def _grads_fn(self, x, y, h, c, seed=None):
        with tf.GradientTape() as tape:
            logits, h, c = self.net(x, h, c, seed)
            loss = mean_cross_entropy(logits, y)
        # The embedding's gradient is IndexedSlices; Adam needs it dense.
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, self.net.params)]
        return loss, grads, h, c

    def _train_fn(self, x, y, h, c):
        # A fresh dropout seed per step, derived from (seed, step), so masks need no saved RNG.
        sites = self.config.num_layers + 1
        seed = self.dropout_seed + tf.stack([tf.constant(0, tf.int64), sites * self.adam.t])
        loss, grads, h, c = self._grads_fn(x, y, h, c, seed)
        grads, _ = tf.clip_by_global_norm(grads, self.optim.clip_norm)
        self.adam.apply(self.net.params, grads)
        return loss, h, c

    def _eval_fn(self, x, y, h, c):
        logits, h, c = self.net(x, h, c)
        return mean_cross_entropy(logits, y), h, c

    # ---- state -----------------------------------------------------------------------
    def zero_state(self, batch_size):
        shape = (self.config.num_layers, batch_size, self.config.rnn_size)
        return tf.zeros(shape), tf.zeros(shape)

    def state_to_numpy(self, state):
        return tuple(s.numpy().copy() for s in state)

    def state_from_numpy(self, h, c):
        return tf.constant(h, tf.float32), tf.constant(c, tf.float32)

    # ---- compute ---------------------------------------------------------------------
    def _run(self, fn, *args):
        with tf.device(self.tf_device):
            return fn(*args)

    @staticmethod
    def _time_major(x):
        """(B, T) ids -> (T, B) int32 tensor, transposed on the host (TF's oneDNN transpose
        has no int32 kernel without AVX-512 and logs an error each time it falls back)."""
        return tf.constant(np.asarray(x, np.int32).T)

    def forward(self, x, state):
        logits, h, c = self._run(self._forward, self._time_major(x), *state)
        return np.transpose(logits.numpy(), (1, 0, 2)), (h, c)  # (B, T, V)

    def step(self, ids, state):
        with tf.device(self.tf_device):
            logits, h, c = self._step(tf.constant(ids, tf.int32), *state)
        return logits.numpy(), (h, c)

    def loss_and_grads(self, x, y, state):
        loss, grads, h, c = self._run(self._grads, self._time_major(x),
                                      self._time_major(y), *state)
        canonical = {name: in_out_layout(name, g.numpy()).copy()
                     for name, g in zip(self.net.names, grads)}
        return float(loss), canonical, (h, c)

    def train_step(self, x, y, state):
        loss, h, c = self._run(self._train, self._time_major(x), self._time_major(y),
                               *state)
        return float(loss), (h, c)  # float() waits for the device

    def eval_step(self, x, y, state):
        loss, h, c = self._run(self._eval, self._time_major(x), self._time_major(y),
                               *state)
        return float(loss), (h, c)

    # ---- weights and checkpoints ----------------------------------------------------
    def get_weights(self):
        return {name: in_out_layout(name, p.numpy()).copy()
                for name, p in zip(self.net.names, self.net.params)}

    def _checkpoint(self):
        return tf.train.Checkpoint(net=self.net, adam=self.adam)

    def save_native(self, directory: Path):
        # Weights, Adam's m and v and its step count (which also seeds dropout).
        self._checkpoint().write(str(directory / "tf_model"))

    def load_native(self, directory: Path):
        self._checkpoint().read(str(directory / "tf_model")).assert_consumed()


MODEL = TFCharRNN  # what common.registry loads

if __name__ == "__main__":
    main(MODEL)

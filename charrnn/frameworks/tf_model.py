"""TensorFlow 2 without Keras: variables in a `tf.Module`, the LSTM, GRU and RNN cells in
TF ops, a compiled train step with `tf.GradientTape`, global-norm clipping and the
optimisers of charrnn.common.optim in TF ops (SPEC sections 4, 8 and 9).

    python tf_model.py train --num-epochs 1
    python tf_model.py train --cell gru --optimizer rmsprop --l2 1e-5
    python tf_model.py generate --seed "KING"

Kernels are held as (in, G*H), the transpose of the canonical layout, so every product
is x @ kernel; the gate orders are the canonical i, f, g, o (LSTM) and r, z, n (GRU).
Keras' optimisers are not used: its Adam adds eps to sqrt(v) before the bias correction,
its RMSprop puts eps inside the square root, and its SGD keeps -lr * b instead of b.

`--precision bf16-mixed` (SPEC section 12) casts both operands of every product of
training and evaluation to tf.bfloat16 (`bf16_matmul`) and the result back to float32;
tf.GradientTape rounds the cotangents to bf16 on the way back through the casts, so the
backward products take bf16 operands too. Everything else stays float32. The one
departure: TF's CPU MatMul has no bf16 x bf16 -> float32 kernel, so each product's
result is rounded to bf16 before it is widened (docs/FRAMEWORKS.md gives the cost).
"""


import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from charrnn.common.config import BF16_MIXED, FP32, ModelConfig, OptimConfig
from charrnn.common.distributed import World
from charrnn.common.framework import CPU, CharRNN, Device, choose_device
from charrnn.common.gpus import tf_gpu_names
from charrnn.common.graph_loop import TFStepLoop
from charrnn.common.optim import update
from charrnn.common.threads import set_tf_threads
from charrnn.common.weights import Weights, in_out_layout

# jit_compile=True (XLA) measured slower on 2 CPU cores with the default spec, interleaved
# in one process (CPU time per train step): 160 ms with XLA against 113 ms as a plain graph
# for the tf.scan loop, 726 against 88 ms for the unrolled loop used here (XLA's CPU code for
# many small matmuls loses to TF's oneDNN kernels); the one-character step gained nothing
# measurable (0.40 against 0.32 ms, best of 5) for XLA's extra compile before the first one.
JIT_COMPILE = False


def bf16_matmul(a, b):
    """a @ b under bf16-mixed: operands rounded to bf16 (tf.cast rounds to nearest, ties to
    even, as charrnn.common.precision.to_bf16), the product widened to float32.

    Neither tf.linalg.matmul(..., output_type=tf.float32) nor BatchMatMulV3(Tout=float32)
    has a CPU kernel for bf16 inputs in TF 2.21 ("No OpKernel was registered"), so the
    product comes out of a bf16 MatMul, summed in float32 inside oneDNN and rounded to bf16
    once (<= u = 2^-8 relative). Called with the float32 variable at every step, so that
    the weight gradients of the T steps are summed in float32 after their Cast back."""
    product = tf.matmul(tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16))
    return tf.cast(product, tf.float32)


# ---------------------------------------------------------------------------------------
# Network. Shapes: B batch_size, T seq_len, E embedding_size, H rnn_size, V vocab_size.
# ---------------------------------------------------------------------------------------


def lstm_cell(z, c):
    """z (B, 4H) pre-activations i, f, g, o and c (B, H) -> new (h, c)."""
    i, f, g, o = tf.split(z, 4, axis=1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(c), c


def lstm_layer(x, h, c, w_ih, w_hh, bias, seq_len, matmul):
    """x (T*B, in) time-major rows, h and c (B, H) -> outputs (T*B, H) time-major, final h, c;
    `matmul` is tf.matmul (fp32) or bf16_matmul (bf16-mixed).

    The input projection of every step is one product; the time loop is a Python loop,
    unrolled when the function is traced (one trace per (B, T) shape). Measured on 2 cores
    against `tf.scan` (a while loop over TensorLists), interleaved in one process: 1.18-1.3x
    faster per train step, 88 against 110 ms CPU time (the scan's TensorListStack and
    ZerosLike accumulators, and 9 einsums, go away); a `tf.while_loop` reading a
    TensorArray was 1.10x, `tf.raw_ops.BlockLSTM` (fused, gates i, c, f, o) 0.68x.
    """
    x_proj = tf.split(matmul(x, w_ih) + bias, seq_len, axis=0)  # T x (B, 4H)
    hs = []
    for z_x in x_proj:
        h, c = lstm_cell(z_x + matmul(h, w_hh), c)
        hs.append(h)
    return tf.concat(hs, axis=0), h, c


def gru_cell(x_proj, h_proj, h):
    """x_proj and h_proj (B, 3H) the input and recurrent projections, biases included, gates
    r, z, n; h (B, H) -> new h (SPEC section 8: n = tanh(x_n + r * h_n), PyTorch's GRU)."""
    x_rz, x_n = tf.split(x_proj, [-1, h.shape[-1]], axis=1)
    h_rz, h_n = tf.split(h_proj, [-1, h.shape[-1]], axis=1)
    r, z = tf.split(tf.sigmoid(x_rz + h_rz), 2, axis=1)
    n = tf.tanh(x_n + r * h_n)
    return n + z * (h - n)  # (1 - z) * n + z * h


def gru_layer(x, h, w_ih, w_hh, b_ih, b_hh, seq_len, matmul):
    """`lstm_layer` for the GRU: the input projection hoisted out of the unrolled loop, the
    recurrent one (which r gates inside n) per step. Returns outputs (T*B, H) and final h."""
    x_proj = tf.split(matmul(x, w_ih) + b_ih, seq_len, axis=0)  # T x (B, 3H)
    hs = []
    for x_t in x_proj:
        h = gru_cell(x_t, matmul(h, w_hh) + b_hh, h)
        hs.append(h)
    return tf.concat(hs, axis=0), h


def rnn_layer(x, h, w_ih, w_hh, bias, seq_len, matmul):
    """`lstm_layer` for the vanilla RNN, h' = tanh(x W_ih + h W_hh + bias)."""
    x_proj = tf.split(matmul(x, w_ih) + bias, seq_len, axis=0)  # T x (B, H)
    hs = []
    for x_t in x_proj:
        h = tf.tanh(x_t + matmul(h, w_hh))
        hs.append(h)
    return tf.concat(hs, axis=0), h


class Net(tf.Module):
    """The trainable variables and the forward pass, for any cell."""

    def __init__(self, config: ModelConfig, weights: Weights, precision: str = FP32):
        super().__init__(name="char_rnn")
        self.config = config
        # The products of the sequence pass (training, evaluation); `step` (generation)
        # keeps tf.matmul, float32 whatever the precision (SPEC section 12).
        self.matmul = bf16_matmul if precision == BF16_MIXED else tf.matmul
        L = config.num_layers
        # The canonical<->native name map: one attribute per part of a layer, named by the
        # canonical short name (w_ih, w_hh, then bias, or GRU's b_ih and b_hh), each a list
        # over layers. `names` is the fixed order shared by the variables, the gradients
        # and the optimiser's slots (`params`).
        parts = ("w_ih", "w_hh", *config.bias_names())
        self.names = ["embedding", *(f"{config.layer(k)}.{part}" for part in parts
                                     for k in range(L)), "dense.w", "dense.b"]

        def variable(name, label):
            return tf.Variable(in_out_layout(name, weights[name]), name=label)

        self.embedding = variable("embedding", "embedding")  # (V, E)
        for part in parts:  # kernels (in, G*H) and (H, G*H), biases (G*H,)
            setattr(self, part, [variable(f"{config.layer(k)}.{part}", f"{part}_{k}")
                                 for k in range(L)])
        self.dense_w = variable("dense.w", "dense_w")  # (H, V)
        self.dense_b = variable("dense.b", "dense_b")  # (V,)
        self.params = [self.embedding, *(getattr(self, part)[k] for part in parts
                                         for k in range(L)), self.dense_w, self.dense_b]
        # What --l1 and --l2 penalise (config.kernel_names()): every w_ih, w_hh and dense.w.
        self.kernels = [*self.w_ih, *self.w_hh, self.dense_w]

    def layer_params(self, k):
        """Layer k's variables: w_ih, w_hh, then its biases in config.bias_names() order."""
        return [getattr(self, part)[k] for part in ("w_ih", "w_hh", *self.config.bias_names())]

    def _dropout(self, a, seed, k):
        """Inverted dropout; `seed` (2,) int64 differs per step, k per site."""
        rate = self.config.drop_rate
        if seed is None or rate == 0.0:
            return a
        return tf.nn.experimental.stateless_dropout(a, rate, seed + tf.constant([0, k], tf.int64))

    def __call__(self, x, h, c, seed=None):
        """x (T, B) int32 TIME-MAJOR, h and c (L, B, H) -> logits (T, B, V), new h and c.

        Dropout is on only when `seed` is given (training). GRU and RNN have no cell
        state: their c (zeros, SPEC section 10) passes through untouched."""
        seq_len = x.shape[0]
        out = self._dropout(tf.gather(self.embedding, tf.reshape(x, [-1])), seed, 0)  # (T*B, E)
        new_h, new_c = [], []
        for k in range(self.config.num_layers):
            if self.config.cell == "lstm":
                out, hk, ck = lstm_layer(out, h[k], c[k], *self.layer_params(k), seq_len,
                                         self.matmul)
                new_c.append(ck)
            else:
                layer = gru_layer if self.config.cell == "gru" else rnn_layer
                out, hk = layer(out, h[k], *self.layer_params(k), seq_len, self.matmul)
            out = self._dropout(out, seed, k + 1)  # (T*B, H)
            new_h.append(hk)
        logits = self.matmul(out, self.dense_w) + self.dense_b  # (T*B, V)
        return (tf.reshape(logits, [seq_len, -1, logits.shape[-1]]), tf.stack(new_h),
                tf.stack(new_c) if new_c else c)

    def step(self, ids, h, c):
        """ids (B,) -> logits (B, V): one character through each layer's cell, no scan."""
        out = tf.gather(self.embedding, ids)  # (B, E)
        new_h, new_c = [], []
        for k in range(self.config.num_layers):
            w_ih, w_hh, *bias = self.layer_params(k)
            if self.config.cell == "lstm":
                z = tf.matmul(out, w_ih) + tf.matmul(h[k], w_hh) + bias[0]
                out, ck = lstm_cell(z, c[k])
                new_c.append(ck)
            elif self.config.cell == "gru":
                out = gru_cell(tf.matmul(out, w_ih) + bias[0], tf.matmul(h[k], w_hh) + bias[1],
                               h[k])
            else:
                out = tf.tanh(tf.matmul(out, w_ih) + tf.matmul(h[k], w_hh) + bias[0])
            new_h.append(out)
        return (tf.matmul(out, self.dense_w) + self.dense_b, tf.stack(new_h),
                tf.stack(new_c) if new_c else c)


def mean_cross_entropy(logits, y):
    """logits (T, B, V), y (T, B) -> mean loss in nats."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))


def penalty(kernels, l1, l2):
    """l1 * sum|W| + l2 * sum W^2 over the kernels (SPEC section 9), a term only where its
    coefficient is non-zero. tf.abs's gradient is sign(W), 0 at 0, as the spec asks."""
    terms = []
    for w in kernels:
        if l1:
            terms.append(l1 * tf.reduce_sum(tf.abs(w)))
        if l2:
            terms.append(l2 * tf.reduce_sum(tf.square(w)))
    return tf.add_n(terms)


def float32(a):
    """A scalar of the update as float32: a graph's (the rate, a bias correction) cast, a
    Python number left to TF, which makes it a float32 constant beside float32 tensors."""
    return a if isinstance(a, (int, float)) else tf.cast(a, tf.float32)


class Optimizer(tf.Module):
    """The optimiser of `optim`, charrnn.common.optim's formulas in TF ops (SPEC sections
    4 and 9): the update count t (which also seeds dropout) and the per-parameter slots
    of `OptimConfig.slots()` (Adam's m and v, RMSprop's v, SGD's b), zero at the start."""

    def __init__(self, params, optim: OptimConfig):
        super().__init__(name=optim.optimizer)
        self.optim = optim
        self.t = tf.Variable(0, dtype=tf.int64, trainable=False, name="t")
        # A variable, not a constant of the graph: a schedule sets it before each step.
        self.lr = tf.Variable(optim.learning_rate, dtype=tf.float64, trainable=False,
                              name="lr")
        for slot in optim.slots():
            setattr(self, slot, [tf.Variable(tf.zeros_like(p), trainable=False, name=slot)
                                 for p in params])

    def apply(self, params, grads):
        # t and the rate in float64: Adam's bias corrections as the NumPy reference
        # computes them, rounded to float32 once.
        t = tf.cast(self.t.assign_add(1), tf.float64)
        names = self.optim.slots()
        for p, g, *slots in zip(params, grads, *(getattr(self, name) for name in names)):
            new_p, new_slots = update(tf.math, self.optim, p, g, dict(zip(names, slots)), t,
                                      self.lr, float32)
            for slot, name in zip(slots, names):
                slot.assign(new_slots[name])
            p.assign(new_p)


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class TFCharRNN(CharRNN):
    framework = "tensorflow"
    precisions = (FP32, BF16_MIXED)

    def __init__(self, config: ModelConfig, weights: Weights, optim: OptimConfig,
                 device: Device = CPU, seed: int = 0):
        super().__init__(config, weights, optim, device, seed)
        self.tf_device = f"/GPU:{device.index}" if device.is_gpu else "/CPU:0"
        L, H = config.num_layers, config.rnn_size
        with tf.device(self.tf_device):
            self.net = Net(config, {n: np.asarray(a, np.float32) for n, a in weights.items()},
                           optim.precision)
            self.optimizer = Optimizer(self.net.params, optim)
        self.dropout_seed = tf.constant([seed, 0], tf.int64)
        # The sequence functions trace once per (B, T) shape: the unrolled time loop needs a
        # static T, and a static B drops the broadcast-gradient Sums of every elementwise op
        # (about 1,000 of them per step; 4% of a step's CPU time). The train loop has one shape.
        self._train = tf.function(self._train_fn, jit_compile=JIT_COMPILE)
        if self.world.size > 1:  # each worker's step, with the gradients averaged between
            self._train = tf.function(lambda *args: self.strategy.run(self._train_fn,
                                                                      args=args))
        self._grads = tf.function(self._grads_fn, jit_compile=JIT_COMPILE)
        self._eval = tf.function(self._eval_fn, jit_compile=JIT_COMPILE)
        self._forward = tf.function(lambda x, h, c: self.net(x, h, c), jit_compile=JIT_COMPILE)
        # Generation calls the traced graph itself (a ConcreteFunction, any batch size): the
        # polymorphic tf.function's argument matching cost more than the graph, 0.42 against
        # 0.25 ms a character on a quiet moment of this shared machine.
        state = tf.TensorSpec([L, None, H], tf.float32)
        self._step = tf.function(self.net.step, jit_compile=JIT_COMPILE).get_concrete_function(
            tf.TensorSpec([None], tf.int32), state, state)
        # `generate` runs its steps in one tf.while_loop with the sampler called back from
        # inside: 2x the characters a second of the Python loop over `_step`.
        self._steps = TFStepLoop(tf, self.net.step, [state, state])

    @classmethod
    def versions(cls):
        return {"tensorflow": tf.__version__}

    # ---- data parallel: MultiWorkerMirroredStrategy (docs/SPEC.md section 11) -------------
    strategy = None

    @classmethod
    def init_world(cls, world: World, device: str, timeout_s: float) -> None:
        """A MultiWorkerMirroredStrategy over TF_CONFIG's workers, used only for its
        collectives: the variables stay plain per-worker ones, and the train step runs
        inside `strategy.run` so that it can all-reduce the gradients (Keras' `fit` is
        not used). A world from torchrun's variables on one machine gets a TF_CONFIG of
        consecutive ports from MASTER_PORT; several machines need a real TF_CONFIG."""
        if world.source != "TF_CONFIG":
            host, port = world.coordinator.rsplit(":", 1)
            os.environ["TF_CONFIG"] = json.dumps({
                "cluster": {"worker": [f"{host}:{int(port) + r}" for r in range(world.size)]},
                "task": {"type": "worker", "index": world.rank}})
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_s)
        cls.strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        cls.world = world

    @classmethod
    def all_sum(cls, values):
        total = cls._all_sum_fn(tf.constant(np.asarray(values, np.float64)))
        return cls.strategy.experimental_local_results(total)[0].numpy()

    @staticmethod
    @tf.function
    def _all_sum_fn(values):
        def replica_sum(v):
            with tf.device("/CPU:0"):  # a traced argument has no device: the reduction's
                v = tf.identity(v)     # destination is the value's device
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, v)
        return TFCharRNN.strategy.run(replica_sum, args=(values,))

    @classmethod
    def setup_device(cls, device, threads):
        set_tf_threads(tf, threads)
        return choose_device(device, tf_gpu_names(), "TensorFlow sees no GPU (a CPU-only "
                                                     "tensorflow, or no CUDA driver; install "
                                                     "tensorflow[and-cuda])")

    # ---- compiled functions: x, y (T, B) int32, time-major; h, c (L, B, H) ---------------
    def _grads_fn(self, x, y, h, c, seed=None):
        with tf.GradientTape() as tape:
            logits, h, c = self.net(x, h, c, seed)
            loss = mean_cross_entropy(logits, y)  # what is returned and logged
            objective = (loss + penalty(self.net.kernels, self.optim.l1, self.optim.l2)
                         if self.optim.penalised else loss)
        # The embedding's gradient is IndexedSlices; the optimisers need it dense.
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(objective, self.net.params)]
        return loss, grads, h, c

    def _train_fn(self, x, y, h, c):
        # A fresh dropout seed per step, derived from (seed, step), so masks need no saved RNG.
        sites = self.config.num_layers + 1
        seed = self.dropout_seed + tf.stack([tf.constant(0, tf.int64), sites * self.optimizer.t])
        loss, grads, h, c = self._grads_fn(x, y, h, c, seed)
        if self.world.size > 1:  # the workers' mean: MultiWorkerMirroredStrategy's all-reduce
            grads = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.MEAN, grads)
        grads, _ = tf.clip_by_global_norm(grads, self.optim.clip_norm)
        self.optimizer.apply(self.net.params, grads)
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
        h = tf.constant(h, tf.float32)
        # GRU and RNN have no cell state: their c is zeros, whatever comes in (SPEC section 10).
        return h, tf.constant(c, tf.float32) if self.config.cell == "lstm" else tf.zeros_like(h)

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

    def steps(self, ids, state, count, choose):
        with tf.device(self.tf_device):
            return tuple(self._steps(ids, state, count, choose))

    def loss_and_grads(self, x, y, state):
        loss, grads, h, c = self._run(self._grads, self._time_major(x),
                                      self._time_major(y), *state)
        canonical = {name: in_out_layout(name, g.numpy()).copy()
                     for name, g in zip(self.net.names, grads)}
        return float(loss), canonical, (h, c)

    def set_learning_rate(self, learning_rate):
        self.optimizer.lr.assign(learning_rate)  # a variable the traced update reads

    def train_step(self, x, y, state):
        out = self._run(self._train, self._time_major(x), self._time_major(y), *state)
        if self.world.size > 1:  # one replica per worker: its results
            out = [self.strategy.experimental_local_results(t)[0] for t in out]
        loss, h, c = out
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
        # Keyed by the optimiser's name ("adam", as before the other optimisers came):
        # restoring another optimiser's checkpoint fails in assert_consumed.
        return tf.train.Checkpoint(net=self.net, **{self.optim.optimizer: self.optimizer})

    def save_native(self, directory: Path):
        # Weights, the optimiser's slots and its step count (which also seeds dropout).
        self._checkpoint().write(str(directory / "tf_model"))

    def load_native(self, directory: Path):
        self._checkpoint().read(str(directory / "tf_model")).assert_consumed()


MODEL = TFCharRNN  # what charrnn.common.registry loads


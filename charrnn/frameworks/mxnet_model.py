"""MXNet Gluon: the fused `gluon.rnn.LSTM`, `GRU` and `RNN` operators (oneDNN on a CPU,
cuDNN on a GPU), hybridized, with Adam, RMSprop and SGD as PyTorch has them and
global-norm clipping.

    python mxnet_model.py train --num-epochs 1 --threads 2
    python mxnet_model.py generate --seed "KING"

MXNet lives in the legacy environment (.venv-legacy); run from any Python, the
script re-executes itself there. What differs from the other frameworks:

- The LSTM's gate order is i, f, c, o with (4H, in) kernels, the GRU's r, z, n with
  (3H, in): the canonical layouts as they are. Each keeps two biases per layer; the
  GRU's are its canonical b_ih and b_hh, while the LSTM's and the RNN's `h2h_bias` is
  held at zero with grad_req "null", so it is neither trained nor counted
  (docs/SPEC.md section 1).
- One fused single-layer operator per layer, because the oneDNN CPU kernel ignores the
  fused operator's between-layer dropout; generation runs LSTMCells (GRUCells,
  RNNCells) that share the same Parameters, since the fused operator's per-call set-up
  dominates at T = 1 (3-10x fewer chars/s, measured for the LSTM).
- MXNet's Adam computes lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps),
  PyTorch's formula only with a step-dependent eps; its RMSProp divides by
  sqrt(v + eps), eps inside the sqrt; its SGD keeps b = momentum * b + lr * g, the
  learning rate inside the buffer. `TorchAdam`, `TorchRMSProp` and `TorchSGD` below
  are registered optimizers that run charrnn.common.optim's (docs/SPEC.md sections 4
  and 9).
- The engine is asynchronous: `train_step` returns `loss.asscalar()`, which
  waits for the loss; the backward and the update run on, and the next step's
  forward waits for them (it reads the weights), so the loop's median step is the
  work of one step (docs/FRAMEWORKS.md).

`--precision bf16-mixed` (docs/SPEC.md section 12): MXNet 1.9.1 has bf16 CPU kernels
(oneDNN) for FullyConnected, forward and backward, but none for the fused RNN operator,
so each recurrent layer becomes a time loop of bf16 FullyConnected products with float32
gate maths, unrolled when its graph is traced (one graph per sequence length), over the
same Parameters. The one departure: each product's result is rounded to bf16 once before
it is widened (docs/FRAMEWORKS.md gives the cost).
"""

import dataclasses
import os
import sys
from pathlib import Path

from charrnn.common.threads import one_step_command

# Generation steps one character at a time: ~36 operators of at most 130 kFLOP each,
# where OpenMP's fork and join around every operator cost more than the work (2.5-5x
# the chars/s with one thread than with two, measured on the 2-core machine). So the
# one-step commands load MXNet with one OpenMP thread; training keeps --threads. They
# also run MXNet's synchronous engine: with one small graph call at a time there is
# nothing for the threaded one to overlap (1.12x the characters a second, docs/FRAMEWORKS.md).
ONE_THREAD = one_step_command()
if ONE_THREAD:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("MXNET_ENGINE_TYPE", "NaiveEngine")
# Common-subexpression elimination (MXNet's default since 1.6, read when a graph is built)
# merges bf16-mixed's per-step casts of a layer's W_hh (`product`) into one, and autograd
# then sums that cast's per-step gradients in bf16 (measured: the summed gradient was
# bf16-representable, 0.24 off the float32 sum of 12 steps' gradients of about 20).
# Off, each step's gradient is widened and the sum is float32. fp32's graphs have nothing
# it could merge (no node with the same operator, attributes and inputs as another, in
# the training, evaluation, one-step and loss graphs of all three cells).
os.environ["MXNET_ELIMINATE_COMMON_EXPR"] = "0"

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from mxnet.contrib.amp.amp import bfloat16 as BF16  # MXNet's bf16 dtype (NumPy has none)
from mxnet.gluon import nn, rnn

from charrnn.common.config import BF16_MIXED, FP32, ModelConfig, OptimConfig
from charrnn.common.framework import CPU, CharRNN, Device, choose_device
from charrnn.common.optim import adam_update, penalty_grad, rmsprop_update, sgd_update
from charrnn.common.weights import Weights

# ---------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------


# Per cell: the fused layer, the cell that shares its Parameters for generation, and
# the arguments both take.
CELLS = {"lstm": (rnn.LSTM, rnn.LSTMCell, {}), "gru": (rnn.GRU, rnn.GRUCell, {}),
         "rnn": (rnn.RNN, rnn.RNNCell, {"activation": "tanh"})}


class Net(gluon.HybridBlock):
    """Embedding -> one fused layer per recurrent layer -> Dense. The state is (h, c) for
    the LSTM and (h,) for the GRU and RNN, each (L, B, H). Under bf16-mixed the layers
    and the dense layer run as `Bf16Recurrent` and `Bf16Dense` over the same Parameters,
    the recurrence unrolled over `seq_len` steps."""

    def __init__(self, config: ModelConfig, precision: str = FP32, seq_len: int | None = None,
                 **block_kwargs):
        super().__init__(**block_kwargs)  # prefix and params, to share another Net's
        fused, _, kwargs = CELLS[config.cell]
        with self.name_scope():
            self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
            self.drop = nn.Dropout(config.drop_rate)
            # One fused single-layer operator per layer, with our own dropout after each:
            # the fused operator's between-layer dropout is silently skipped by the
            # oneDNN CPU kernel (apache/mxnet#16604, oneDNN#807).
            self.layers = []
            for k in range(config.num_layers):
                layer = fused(config.rnn_size, 1, layout="NTC", input_size=(
                    config.embedding_size if k == 0 else config.rnn_size), **kwargs)
                self.register_child(layer, f"{config.cell}{k}")  # "lstm0": saved names
                self.layers.append(layer)
            self.dense = nn.Dense(config.vocab_size, flatten=False, in_units=config.rnn_size)
        # bf16-mixed: the same Parameters through bf16 products (children of a bf16 Net
        # only; the model saves its fp32 Net, so the saved names do not change).
        self.bf16_layers, self.bf16_dense = [], None
        if precision == BF16_MIXED:
            for k, layer in enumerate(self.layers):
                self.bf16_layers.append(Bf16Recurrent(layer, config, seq_len))
                self.register_child(self.bf16_layers[-1], f"bf16_{config.cell}{k}")
            self.bf16_dense = Bf16Dense(self.dense, config.vocab_size)

    def hybrid_forward(self, F, x, *state):
        """x (B, T) ids, state (L, B, H) each -> logits (B, T, V), new state."""
        out = self.drop(self.embedding(x))  # (B, T, E)
        new_state = []
        for k, layer in enumerate(self.bf16_layers or self.layers):
            state_k = [F.slice_axis(s, axis=0, begin=k, end=k + 1) for s in state]  # (1, B, H)
            out, state_k = layer(out, state_k)
            out = self.drop(out)  # (B, T, H)
            new_state.append(state_k)
        dense = self.dense if self.bf16_dense is None else self.bf16_dense
        return (dense(out), *(F.concat(*layers, dim=0) for layers in zip(*new_state)))


# ---- bf16-mixed (docs/SPEC.md section 12) ---------------------------------------------
# MXNet 1.9.1's bf16 on the CPU is oneDNN's (v2.4.4 here): FullyConnected has bf16 kernels
# forward and backward (oneDNN's inner product, avx512_core_bf16 on Zen 4), the fused RNN
# operator has none ("Unknown type enum 12" for bf16 inputs; AMP's own lists keep RNN in
# float32), and dot, batch_dot and linalg.gemm2 refuse bf16 on the CPU. So every product
# is a bf16 FullyConnected, and each layer a time loop around it.


def product(F, x, w, num_hidden: int):
    """x (..., in) times w (out, in) transposed -> (..., out) float32, from bf16 operands.

    amp_cast rounds each operand to bf16 (to nearest, ties to even: `to_bf16` bit for bit
    on normal numbers; it flushes subnormals to zero; `astype`'s Cast truncates), oneDNN
    sums the products in float32 and rounds the result to bf16 (FullyConnected has no bf16
    to float32 kernel: section 12's one departure here), which is widened. Under autograd
    the widening cast's backward rounds the cotangent to bf16 and the operands' casts widen
    the gradients, so backward's products take bf16 operands and give float32 too."""
    y = F.FullyConnected(F.amp_cast(x, dtype=BF16), F.amp_cast(w, dtype=BF16), no_bias=True,
                         num_hidden=num_hidden, flatten=False)
    return F.amp_cast(y, dtype="float32")


def lstm_step(F, x_proj, h, c, w_hh, H):
    """x_proj (B, 4H) = x W_ih^T + bias, precomputed; h, c (B, H) -> new h, c."""
    i, f, g, o = F.split(x_proj + product(F, h, w_hh, 4 * H), num_outputs=4, axis=-1)
    c = F.sigmoid(f) * c + F.sigmoid(i) * F.tanh(g)
    return F.sigmoid(o) * F.tanh(c), c


def gru_step(F, x_proj, h, w_hh, b_hh, H):
    """x_proj (B, 3H) = x W_ih^T + b_ih; r multiplies the n block of h W_hh^T + b_hh."""
    x_r, x_z, x_n = F.split(x_proj, num_outputs=3, axis=-1)
    h_r, h_z, h_n = F.split(F.broadcast_add(product(F, h, w_hh, 3 * H), b_hh), num_outputs=3,
                            axis=-1)
    r, z = F.sigmoid(x_r + h_r), F.sigmoid(x_z + h_z)
    n = F.tanh(x_n + r * h_n)
    return (1.0 - z) * n + z * h


class Bf16Recurrent(gluon.HybridBlock):
    """A fused layer's Parameters (shared, as StepNet shares them) computed as a time loop
    of bf16 `product`s: the input projection of every step at once, then per step the
    recurrent product and the float32 gate maths. `seq_len` steps are unrolled when the
    graph is traced. W_hh is cast at every step, so its per-step gradients are widened and
    summed in float32 (cast once, autograd would sum them in bf16)."""

    def __init__(self, layer, config: ModelConfig, seq_len: int):
        super().__init__(prefix=layer.prefix, params=layer.params)
        self.cell, self.gates, self.rnn_size = config.cell, config.gates, config.rnn_size
        self.seq_len = seq_len
        for name in ("l0_i2h_weight", "l0_h2h_weight", "l0_i2h_bias", "l0_h2h_bias"):
            setattr(self, name, self.params.get(name))  # the layer's own Parameter

    def hybrid_forward(self, F, inputs, states, l0_i2h_weight, l0_h2h_weight, l0_i2h_bias,
                       l0_h2h_bias):
        """inputs (B, T, in), states [(1, B, H)] * (2 or 1) -> (B, T, H), new states."""
        H, cell = self.rnn_size, self.cell
        # The LSTM's and RNN's h2h_bias is zero and frozen, but part of the layer's sum.
        bias = l0_i2h_bias if cell == "gru" else l0_i2h_bias + l0_h2h_bias
        x_proj = F.broadcast_add(product(F, F.swapaxes(inputs, 0, 1), l0_i2h_weight,
                                         self.gates * H), bias)  # (T, B, gates * H)
        steps = (F.split(x_proj, num_outputs=self.seq_len, axis=0, squeeze_axis=True)
                 if self.seq_len > 1 else [F.squeeze(x_proj, axis=0)])
        h, *c = (F.squeeze(s, axis=0) for s in states)  # (B, H)
        outputs = []
        for x_t in steps:
            if cell == "lstm":
                h, c[0] = lstm_step(F, x_t, h, c[0], l0_h2h_weight, H)
            elif cell == "gru":
                h = gru_step(F, x_t, h, l0_h2h_weight, l0_h2h_bias, H)
            else:
                h = F.tanh(x_t + product(F, h, l0_h2h_weight, H))
            outputs.append(h)
        return F.stack(*outputs, axis=1), [F.expand_dims(s, axis=0) for s in (h, *c)]


class Bf16Dense(gluon.HybridBlock):
    """nn.Dense's Parameters (shared): logits = bf16 `product` + the float32 bias."""

    def __init__(self, dense: nn.Dense, vocab_size: int):
        super().__init__(prefix=dense.prefix, params=dense.params)
        self.vocab_size = vocab_size
        self.weight, self.bias = self.params.get("weight"), self.params.get("bias")

    def hybrid_forward(self, F, x, weight, bias):
        return F.broadcast_add(product(F, x, weight, self.vocab_size), bias)  # (B, T, V)


class StepNet(gluon.HybridBlock):
    """One generation step through the same Parameters, compiled into one graph: a cell
    per layer named like the fused layer's l0_* weights shares them (the same gate
    order, i, f, c, o or r, z, n, too)."""

    def __init__(self, net: Net, config: ModelConfig):
        super().__init__()
        _, cell_cls, kwargs = CELLS[config.cell]
        self.embedding, self.dense = net.embedding, net.dense
        self.cells = []
        for k, layer in enumerate(net.layers):
            # A container with the layer's prefix and Parameters, so that the cell's
            # "l0_i2h_weight" etc. resolve to the layer's own Parameter objects.
            cell = rnn.HybridSequentialRNNCell(prefix=layer.prefix, params=layer.params)
            with cell.name_scope():
                cell.add(cell_cls(config.rnn_size, prefix="l0_", input_size=(
                    config.embedding_size if k == 0 else config.rnn_size), **kwargs))
            self.register_child(cell, f"cell{k}")
            self.cells.append(cell)

    def hybrid_forward(self, F, x, *state):
        """x (B,) ids, state (L, B, H) each -> logits (B, V), new state."""
        out = self.embedding(x)  # (B, E)
        new_state = []
        for k, cell in enumerate(self.cells):
            state_k = [F.squeeze(F.slice_axis(s, axis=0, begin=k, end=k + 1), axis=0)
                       for s in state]  # (B, H)
            out, state_k = cell(out, state_k)
            new_state.append(state_k)
        return (self.dense(out), *(F.stack(*layers, axis=0) for layers in zip(*new_state)))


class SpecOptimizer(mx.optimizer.Optimizer):
    """An update of docs/SPEC.md sections 4 and 9: `slots` zero arrays per weight, and
    `apply` given the step count, the learning rate, the weight, the gradient and the
    slots, which writes charrnn.common.optim's results back into them (MXNet casts the
    Python float scalars to float32 itself). Subclasses are registered, so Trainer can
    save them."""

    slots = 1

    def create_state(self, index, weight):
        return tuple(nd.zeros(weight.shape, weight.context, dtype=weight.dtype)
                     for _ in range(self.slots))

    def update(self, index, weight, grad, state):
        self._update_count(index)
        g = grad * self.rescale_grad if self.rescale_grad != 1.0 else grad
        self.apply(self._index_update_count[index], self._get_lr(index), weight, g, *state)


@mx.optimizer.register
class TorchAdam(SpecOptimizer):
    """Adam with PyTorch's bias correction and eps placement (docs/SPEC.md section 4)."""

    slots = 2

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon

    def apply(self, t, lr, weight, g, m, v):
        weight[:], m[:], v[:] = adam_update(nd, weight, g, m, v, t, lr, self.beta1,
                                            self.beta2, self.epsilon)


@mx.optimizer.register
class TorchRMSProp(SpecOptimizer):
    """RMSprop with eps outside the sqrt, not centred (docs/SPEC.md section 9; PyTorch's
    too): v = rho * v + (1 - rho) * g^2, p -= lr * g / (sqrt(v) + eps). MXNet's own
    divides by sqrt(v + eps)."""

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-8, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rho, self.epsilon = rho, epsilon

    def apply(self, t, lr, weight, g, v):
        weight[:], v[:] = rmsprop_update(nd, weight, g, v, lr, self.rho, self.epsilon)


@mx.optimizer.register
class TorchSGD(SpecOptimizer):
    """SGD with PyTorch's momentum form (docs/SPEC.md section 9): b = momentum * b + g,
    p -= lr * b. MXNet's own keeps b = momentum * b + lr * g, the learning rate inside
    the buffer."""

    def __init__(self, learning_rate=0.001, momentum=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = momentum

    def apply(self, t, lr, weight, g, b):
        weight[:], b[:] = sgd_update(weight, g, b, lr, self.momentum)


def make_optimizer(optim: OptimConfig) -> mx.optimizer.Optimizer:
    """The optimiser of docs/SPEC.md sections 4 and 9."""
    if optim.optimizer == "rmsprop":
        return TorchRMSProp(learning_rate=optim.learning_rate, rho=optim.decay_rate,
                            epsilon=optim.eps)
    if optim.optimizer == "sgd":
        return TorchSGD(learning_rate=optim.learning_rate, momentum=optim.momentum)
    return TorchAdam(learning_rate=optim.learning_rate, beta1=optim.beta1,
                     beta2=optim.beta2, epsilon=optim.eps)


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


# hybridize(): one cached graph per input shape, memory planned once (1.35x a default
# step against a plain hybridize(), docs/FRAMEWORKS.md).
STATIC = {"static_alloc": True, "static_shape": True}


class MxnetCharRNN(CharRNN):
    framework = "mxnet"
    precisions = (FP32, BF16_MIXED)
    # MXNet trains data-parallel across processes through a dist_sync kvstore, started by
    # its parameter-server launcher (tools/launch.py), which the pip package lacks.
    data_parallel_refusal = ("MXNet's multi-process training needs a dist_sync kvstore "
                             "started by its parameter-server launcher (tools/launch.py, "
                             "not in the pip package)")

    def __init__(self, config: ModelConfig, weights: Weights, optim: OptimConfig,
                 device: Device = CPU, seed: int = 0):
        super().__init__(config, weights, optim, device, seed)
        mx.random.seed(seed)  # dropout masks
        self.ctx = mx.gpu(device.index) if device.is_gpu else mx.cpu()
        self.net = Net(config)
        self.net.initialize(mx.init.Zero(), ctx=self.ctx)
        self._load_canonical(weights)
        self.net.hybridize(**STATIC)
        self.step_net = StepNet(self.net, config)
        self.step_net.hybridize(**STATIC)
        # The graphs that run batches, by `_graph`'s key; fp32's with dropout is self.net.
        self._nets = {(None, True): self.net} if optim.precision == FP32 else {}
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()  # sparse labels, softmax on -1
        self.loss_fn.hybridize(**STATIC)
        self.params = [p for p in self.net.collect_params().values() if p.grad_req != "null"]
        self.trainer = gluon.Trainer(self.params, make_optimizer(optim), kvstore=None)
        native = self._native()
        # The Parameters holding the kernels that --l1 and --l2 penalise.
        self._kernels = [native[name][0] for name in config.kernel_names()]
        self._num_states = 2 if config.cell == "lstm" else 1  # (h, c) or (h,)

    @classmethod
    def versions(cls):
        return {"mxnet": mx.__version__, "numpy": np.__version__}

    @classmethod
    def setup_device(cls, device, threads):
        # Threads: early_setup put --threads into OMP_NUM_THREADS and
        # MXNET_CPU_WORKER_NTHREADS before MXNet loaded; they cannot change now.
        if threads and not ONE_THREAD and os.environ.get("OMP_NUM_THREADS") != str(threads):
            print(f"warning: --threads {threads} came too late: MXNet was already "
                  f"loaded with OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
                  file=sys.stderr)
        # MXNet names no GPU models; num_gpus() is 0 at no cost in a CPU build.
        gpu_names = [f"mxnet gpu({i})" for i in range(mx.context.num_gpus())]
        return choose_device(device, gpu_names, "this MXNet sees no CUDA GPU (it needs a "
                             "CUDA build such as mxnet-cu112 and a GPU)")

    # ---- weights: canonical <-> the fused layers (same gate order, same layout) -------
    def _native(self) -> dict[str, tuple[gluon.Parameter, gluon.Parameter | None]]:
        """Canonical name -> (trained Parameter, held-at-zero Parameter or None): only the
        LSTM's and the RNN's "bias" has the second, the layer's h2h_bias beside its
        i2h_bias; the GRU's two biases are its b_ih and b_hh."""
        net, config = self.net, self.config
        native = {"embedding": (net.embedding.weight, None), "dense.w": (net.dense.weight, None),
                  "dense.b": (net.dense.bias, None)}
        for k, layer in enumerate(net.layers):
            prefix = config.layer(k)
            native[f"{prefix}.w_ih"] = (layer.l0_i2h_weight, None)
            native[f"{prefix}.w_hh"] = (layer.l0_h2h_weight, None)
            if config.cell == "gru":
                native[f"{prefix}.b_ih"] = (layer.l0_i2h_bias, None)
                native[f"{prefix}.b_hh"] = (layer.l0_h2h_bias, None)
            else:
                native[f"{prefix}.bias"] = (layer.l0_i2h_bias, layer.l0_h2h_bias)
        return native

    def _load_canonical(self, w: Weights):
        # The canonical array into the trained Parameter, zeros into the second bias,
        # which grad_req "null" keeps out of the graph, the Trainer and the count.
        for name, (trained, zeroed) in self._native().items():
            trained.set_data(nd.array(w[name], ctx=self.ctx, dtype=np.float32))
            if zeroed is not None:
                zeroed.set_data(nd.zeros(zeroed.shape, ctx=self.ctx))
                zeroed.grad_req = "null"

    def get_weights(self):
        # The sum of the two biases: the second is zero, but the sum is the definition.
        weights = {}
        for name, (trained, zeroed) in self._native().items():
            weights[name] = trained.data().asnumpy().copy()
            if zeroed is not None:
                weights[name] += zeroed.data().asnumpy()
        return weights

    # ---- state: NDArrays (L, B, H), detached from any graph ------------------------
    # (h, c) for the LSTM; (h,) for the GRU and RNN, which have no cell state.
    def zero_state(self, batch_size):
        shape = (self.config.num_layers, batch_size, self.config.rnn_size)
        return tuple(nd.zeros(shape, ctx=self.ctx) for _ in range(self._num_states))

    def state_to_numpy(self, state):
        h, *c = (s.asnumpy().astype(np.float32) for s in state)
        return h, (c[0] if c else np.zeros_like(h))

    def state_from_numpy(self, h, c):
        return tuple(nd.array(s, ctx=self.ctx, dtype=np.float32)
                     for s in (h, c)[:self._num_states])

    def _ids(self, a):
        # Embedding and the loss take ids as float32 NDArrays (exact up to 2^24).
        return nd.array(a, ctx=self.ctx, dtype=np.float32)

    # ---- compute ---------------------------------------------------------------------
    def _graph(self, seq_len: int, dropout: bool = True) -> Net:
        """The hybridized Net that runs batches of `seq_len` steps in the run's precision,
        made on first use and sharing self.net's Parameters. fp32's fused layers take any
        length (key None); bf16-mixed unrolls its loop when traced, one graph per length.
        Without `dropout`, a dropout-free twin (loss_and_grads: evaluation mode)."""
        key = (seq_len if self.optim.precision == BF16_MIXED else None,
               dropout or self.config.drop_rate == 0)
        if key not in self._nets:
            config = self.config if key[1] else dataclasses.replace(self.config, drop_rate=0.0)
            net = Net(config, self.optim.precision, key[0], prefix=self.net.prefix,
                      params=self.net.collect_params())
            # Not static_alloc under bf16-mixed: it turns the sum of W_hh's per-step
            # gradients into in-place additions (kAddTo), which amp_cast's oneDNN backward
            # drops: the gradient was the last step's alone (measured; docs/FRAMEWORKS.md).
            net.hybridize(**(STATIC if key[0] is None else {}))
            self._nets[key] = net
        return self._nets[key]

    def forward(self, x, state):
        # Not recording: evaluation mode, dropout off.
        logits, *state = self._graph(x.shape[1])(self._ids(x), *state)
        return logits.asnumpy(), tuple(state)

    def step(self, ids, state):
        logits, *state = self.step_net(self._ids(ids), *state)
        return logits.asnumpy(), tuple(state)  # (B, V): the one wait of the step

    def _loss(self, net, x, y, state):
        # Always recorded in training mode: only then does the oneDNN LSTM keep what its
        # backward needs (in predict mode the backward fails, vector::_M_range_check).
        with autograd.record(train_mode=True):
            logits, *state = net(self._ids(x), *state)
            loss = self.loss_fn(logits, self._ids(y)).mean()  # per-row means, then all
        loss.backward()
        self._add_penalty_grads()
        return loss, tuple(s.detach() for s in state)  # cut the graph: truncated BPTT

    def _add_penalty_grads(self):
        """+ l1 * sign(W) + 2 * l2 * W on the kernels' gradients (docs/SPEC.md section 9;
        sign(0) = 0): the penalties' gradient terms, before clipping sees the gradients."""
        o = self.optim
        if not o.penalised:
            return
        for param in self._kernels:
            grad = param.grad()
            grad += penalty_grad(nd, param.data(), o.l1, o.l2)

    def loss_and_grads(self, x, y, state):
        # Evaluation mode means no dropout: the dropout-free twin.
        loss, state = self._loss(self._graph(x.shape[1], dropout=False), x, y, state)
        # The trained Parameters' gradients; the second bias has grad_req "null".
        grads = {name: trained.grad().asnumpy().copy()
                 for name, (trained, _) in self._native().items()}
        return float(loss.asscalar()), grads, state

    def set_learning_rate(self, learning_rate):
        self.trainer.set_learning_rate(learning_rate)  # the optimizer's lr, read per step

    def train_step(self, x, y, state):
        loss, state = self._loss(self._graph(x.shape[1]), x, y, state)
        gluon.utils.clip_global_norm([p.grad() for p in self.params], self.optim.clip_norm,
                                     check_isfinite=False)  # stays asynchronous
        self.trainer.step(1)  # the loss is already a mean: no rescaling
        return float(loss.asscalar()), state  # waits for the loss; the update runs on

    # ---- native checkpoints ------------------------------------------------------------
    def save_native(self, directory: Path):
        self.net.save_parameters(str(directory / "mxnet_model.params"))
        self.trainer.save_states(str(directory / "mxnet_trainer.states"))

    def load_native(self, directory: Path):
        try:
            self.net.load_parameters(str(directory / "mxnet_model.params"), ctx=self.ctx)
        except mx.base.MXNetError as exc:
            # Its text starts with a C++ traceback; the last line is the message.
            message = str(exc).strip().splitlines()[-1].replace("MXNetError: ", "")
            raise ValueError(f"mxnet_model.params: {message}") from None
        self.trainer.load_states(str(directory / "mxnet_trainer.states"))


MODEL = MxnetCharRNN  # what charrnn.common.registry loads


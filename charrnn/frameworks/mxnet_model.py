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
  waits for the step, so the clock measures the work.
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

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn, rnn

from charrnn.common.config import ModelConfig, OptimConfig
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
    the LSTM and (h,) for the GRU and RNN, each (L, B, H)."""

    def __init__(self, config: ModelConfig, **block_kwargs):
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

    def hybrid_forward(self, F, x, *state):
        """x (B, T) ids, state (L, B, H) each -> logits (B, T, V), new state."""
        out = self.drop(self.embedding(x))  # (B, T, E)
        new_state = []
        for k, layer in enumerate(self.layers):
            state_k = [F.slice_axis(s, axis=0, begin=k, end=k + 1) for s in state]  # (1, B, H)
            out, state_k = layer(out, state_k)
            out = self.drop(out)  # (B, T, H)
            new_state.append(state_k)
        return (self.dense(out), *(F.concat(*layers, dim=0) for layers in zip(*new_state)))


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


class MxnetCharRNN(CharRNN):
    framework = "mxnet"
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
        # static_alloc/static_shape: one cached graph per input shape, memory planned once.
        self.net.hybridize(static_alloc=True, static_shape=True)
        self.step_net = StepNet(self.net, config)
        self.step_net.hybridize(static_alloc=True, static_shape=True)
        self._eval_net = None  # a dropout-free twin for loss_and_grads, made when needed
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()  # sparse labels, softmax on -1
        self.loss_fn.hybridize(static_alloc=True, static_shape=True)
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
    def forward(self, x, state):
        logits, *state = self.net(self._ids(x), *state)  # not recording: evaluation mode
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
        # Evaluation mode means no dropout: with drop_rate > 0, a dropout-free twin that
        # shares every Parameter runs it.
        if self.config.drop_rate > 0 and self._eval_net is None:
            self._eval_net = Net(dataclasses.replace(self.config, drop_rate=0.0),
                                 prefix=self.net.prefix, params=self.net.collect_params())
            self._eval_net.hybridize(static_alloc=True, static_shape=True)
        loss, state = self._loss(self._eval_net or self.net, x, y, state)
        # The trained Parameters' gradients; the second bias has grad_req "null".
        grads = {name: trained.grad().asnumpy().copy()
                 for name, (trained, _) in self._native().items()}
        return float(loss.asscalar()), grads, state

    def set_learning_rate(self, learning_rate):
        self.trainer.set_learning_rate(learning_rate)  # the optimizer's lr, read per step

    def train_step(self, x, y, state):
        loss, state = self._loss(self.net, x, y, state)
        gluon.utils.clip_global_norm([p.grad() for p in self.params], self.optim.clip_norm,
                                     check_isfinite=False)  # stays asynchronous
        self.trainer.step(1)  # the loss is already a mean: no rescaling
        return float(loss.asscalar()), state  # asscalar waits for the step to finish

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


"""JAX + Flax NNX + Optax: `nnx.RNN` over `nnx.OptimizedLSTMCell` (GRU: this file's
`GRUCell`; RNN: `nnx.SimpleCell`), each step one `jax.jit`.

    python jax_model.py train --num-epochs 1
    python jax_model.py generate --seed "KING"

Flax NNX is the API Flax recommends for new code (Linen stays supported). The network
is built once as an abstract graph; its weights live in an `nnx.State` pytree that
Optax updates, and every compiled function is a plain `jax.jit` of (graphdef, params),
so no NNX bookkeeping runs per call. The time loop is the `jax.lax.scan` inside
`nnx.RNN`. The whole train step (forward, loss and penalties, grad, clip, the
optimiser, the dropout key split) is one compiled call. Optax's adam, rmsprop (with
eps_in_sqrt=False) and sgd are SPEC section 9's formulas exactly.

`--precision bf16-mixed` (SPEC section 12) gives every nnx.Linear (input projection,
recurrent product, dense layer) `bf16_dot_general`: bf16 operands, float32 accumulation
and result, in forward and backward alike (a `jax.custom_vjp`: autodiff through the
casts would multiply the unrounded float32 cotangent and round the gradients to bf16).
Training and evaluation use it; generation runs a float32 twin of the network.
"""


import ctypes
import functools
import operator
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import safetensors.numpy
from flax import nnx
from jax import lax
from jax._src import xla_bridge  # no public "has the backend started" query
from jax.experimental import multihost_utils

from charrnn.common.config import BF16_MIXED, FP32, ModelConfig, OptimConfig
from charrnn.common.distributed import World, join_jax, sum_by_allgather
from charrnn.common.errors import CharRnnError
from charrnn.common.framework import CPU, CharRNN, Device, choose_device
from charrnn.common.gpus import jax_gpu_names
from charrnn.common.threads import limit_xla_threads
from charrnn.common.weights import Weights, in_out_layout

# ---------------------------------------------------------------------------------------
# bf16-mixed products (SPEC section 12)
# ---------------------------------------------------------------------------------------


def _dot(a, b, contract):
    """a . b over the axes `contract` ((a's), (b's)), bf16 operands, float32 sums and result."""
    return lax.dot_general(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), (contract, ((), ())),
                           preferred_element_type=jnp.float32)


@jax.custom_vjp
def bf16_matmul(x, w):
    """x (..., K) @ w (K, N) -> (..., N) float32 from bf16-rounded operands (RNE)."""
    return _bf16_matmul_fwd(x, w)[0]


def _bf16_matmul_fwd(x, w):
    x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)  # kept for backward, rounded
    return _dot(x, w, ((x.ndim - 1,), (0,))), (x, w)


def _bf16_matmul_bwd(residuals, g):
    """Both gradient products from the bf16-rounded cotangent g (..., N) and operands.
    Plain autodiff would not: the transpose of a dot with preferred_element_type
    multiplies the float32 cotangent as it is and rounds each gradient to its operand's
    dtype, bf16 (measured in its jaxpr; docs/FRAMEWORKS.md)."""
    x, w = residuals
    batch = tuple(range(x.ndim - 1))
    return _dot(g, w, ((g.ndim - 1,), (1,))), _dot(x, g, (batch, batch))  # (..., K), (K, N)


bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def bf16_dot_general(lhs, rhs, dimension_numbers, precision=None, **_):
    """nnx.Linear's `dot_general` under bf16-mixed: its product is lhs's last axis with
    rhs's first (checked), so `bf16_matmul`."""
    assert dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ())), dimension_numbers
    return bf16_matmul(lhs, rhs)


DOT_GENERAL = {FP32: lax.dot_general, BF16_MIXED: bf16_dot_general}  # by --precision

# ---------------------------------------------------------------------------------------
# Network. Shapes: B batch_size, T seq_len, E embedding_size, H rnn_size, V vocab_size.
# ---------------------------------------------------------------------------------------


class GRUCell(nnx.RNNCellBase):
    """The GRU of SPEC section 8 (PyTorch's, Keras' reset_after=True): one (in, 3H) input
    kernel with b_ih and one (H, 3H) recurrent kernel with b_hh, gates r, z, n side by
    side, the canonical layout transposed.

    `nnx.GRUCell` cannot hold this model: its recurrent projection has no bias, so it
    lacks b_hn inside r * (W_hn h + b_hn) (b_hr and b_hz could fold into b_ih; b_hn
    cannot). Like OptimizedLSTMCell, each step is two matmuls and elementwise gates.
    """

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs):
        self.dense_i = nnx.Linear(in_features, 3 * hidden_features, rngs=rngs)
        self.dense_h = nnx.Linear(hidden_features, 3 * hidden_features, rngs=rngs)

    def __call__(self, h, x):
        x_r, x_z, x_n = jnp.split(self.dense_i(x), 3, axis=-1)
        h_r, h_z, h_n = jnp.split(self.dense_h(h), 3, axis=-1)
        r = nnx.sigmoid(x_r + h_r)
        z = nnx.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        h = (1.0 - z) * n + z * h
        return h, h

    @property
    def num_feature_axes(self) -> int:
        return 1


# The cell of each --cell. nnx.SimpleCell is SPEC section 8's RNN as it stands:
# tanh(W_i x + b + W_h h), its one bias on the input projection.
CELLS = {"lstm": nnx.OptimizedLSTMCell, "gru": GRUCell, "rnn": nnx.SimpleCell}


class Net(nnx.Module):
    """Embedding -> num_layers x LSTM (GRU, RNN) -> Dense, inverted dropout after all but
    the Dense.

    OptimizedLSTMCell holds one (in, 4H) input kernel and one (H, 4H) recurrent kernel
    with the bias, gates i, f, g, o side by side: the canonical layout transposed. (The
    per-gate `nnx.LSTMCell` computes the same thing with eight (in, H) matrices; it
    measured no faster here, and its one-step path runs four times the matmuls.)
    """

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, dot_general=lax.dot_general):
        """`dot_general`: every Linear's product (DOT_GENERAL[precision]); a static
        attribute, so it is part of the graphdef, not of the parameters."""
        E, H = config.embedding_size, config.rnn_size
        self.cell = config.cell
        self.embedding = nnx.Embed(config.vocab_size, E, rngs=rngs)
        self.drop = nnx.Dropout(config.drop_rate)  # no stored RNG: keys come per call
        # rngs=False: the carry is always passed in, so nnx.RNN needs no RNG state.
        # Held under the cell's name ("lstm", "gru", "rnn"), so the parameter paths read
        # like the canonical names and LSTM checkpoints keep theirs.
        setattr(self, config.cell, nnx.List([
            nnx.RNN(CELLS[config.cell](E if k == 0 else H, H, rngs=rngs),
                    return_carry=True, rngs=False)
            for k in range(config.num_layers)]))
        self.dense = nnx.Linear(H, config.vocab_size, rngs=rngs)
        for rnn in getattr(self, config.cell):  # the cells build their Linears themselves
            rnn.cell.dense_i.dot_general = rnn.cell.dense_h.dot_general = dot_general
        self.dense.dot_general = dot_general

    def _state(self, hs, cs, c0):
        """The new (h, c) from each layer's; GRU and RNN have no cell state: c is zeros."""
        return jnp.stack(hs), (jnp.stack(cs) if self.cell == "lstm" else jnp.zeros_like(c0))

    def _drop(self, a, key):
        return a if key is None else self.drop(a, rngs=key)

    def __call__(self, x, state, dropout_key=None):
        """x (B, T) int32, state (h, c) each (L, B, H) -> logits (B, T, V), new state.

        Dropout is on when `dropout_key` is given: one key per dropout site.
        """
        h0, c0 = state
        layers = getattr(self, self.cell)
        keys = [None] * (len(layers) + 1)
        if dropout_key is not None:
            keys = list(jax.random.split(dropout_key, len(layers) + 1))
        out = self._drop(self.embedding(x), keys[0])  # (B, T, E)
        hs, cs = [], []
        for k, rnn in enumerate(layers):
            if self.cell == "lstm":  # Flax carries (c, h), the reverse of PyTorch's (h, c).
                (c, h), out = rnn(out, initial_carry=(c0[k], h0[k]))  # out (B, T, H)
                cs.append(c)
            else:  # GRU and RNN carry h alone
                h, out = rnn(out, initial_carry=h0[k])
            out = self._drop(out, keys[k + 1])
            hs.append(h)
        return self.dense(out), self._state(hs, cs, c0)

    def step(self, ids, state):
        """One generation step without the scan: ids (B,) -> logits (B, V), new state."""
        h0, c0 = state
        out = self.embedding(ids)  # (B, E)
        hs, cs = [], []
        for k, rnn in enumerate(getattr(self, self.cell)):
            if self.cell == "lstm":
                (c, h), out = rnn.cell((c0[k], h0[k]), out)
                cs.append(c)
            else:
                h, out = rnn.cell(h0[k], out)
            hs.append(h)
        return self.dense(out), self._state(hs, cs, c0)


def flax_paths(config: ModelConfig) -> dict[str, tuple]:
    """Canonical name -> its path in the pure-dict form of Net's nnx.State. Kernels are
    (in, G*H), gates in the canonical order. The one LSTM bias sits on dense_h, the one
    RNN bias (SimpleCell's) on dense_i; GRU's b_ih and b_hh on dense_i and dense_h."""
    paths = {"embedding": ("embedding", "embedding"), "dense.w": ("dense", "kernel"),
             "dense.b": ("dense", "bias")}
    biases = {"lstm": {"bias": "dense_h"}, "gru": {"b_ih": "dense_i", "b_hh": "dense_h"},
              "rnn": {"bias": "dense_i"}}[config.cell]
    for k in range(config.num_layers):
        layer, cell = config.layer(k), (config.cell, k, "cell")
        paths |= {f"{layer}.w_ih": (*cell, "dense_i", "kernel"),
                  f"{layer}.w_hh": (*cell, "dense_h", "kernel")}
        paths |= {f"{layer}.{bias}": (*cell, dense, "bias") for bias, dense in biases.items()}
    return paths


def at(tree, path: tuple):
    """The node at `path` in a nested dict (or list)."""
    return functools.reduce(operator.getitem, path, tree)


def to_flax(w: Weights, config: ModelConfig) -> dict:
    """Canonical weights -> the pure-dict form of Net's nnx.State."""
    tree: dict = {}
    for name, path in flax_paths(config).items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = in_out_layout(name, w[name])
    return tree


def from_flax(tree: nnx.State, config: ModelConfig) -> Weights:
    """Inverse of `to_flax`, for weights and gradients alike, as float32 NumPy copies."""
    p = nnx.to_pure_dict(tree)
    return {name: np.ascontiguousarray(in_out_layout(name, np.array(at(p, path), np.float32)))
            for name, path in flax_paths(config).items()}


def make_optimizer(optim: OptimConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then Optax's own optimiser: each is SPEC section 9's formula
    with these arguments. adam: PyTorch's (bias-corrected, eps outside the sqrt).
    rmsprop: eps_in_sqrt=False (its default puts eps inside the sqrt), initial_scale 0,
    uncentred, no momentum. sgd: `trace`, b = momentum b + g (nesterov off); with
    momentum 0 no buffer at all.

    Built with a learning rate of 1: its last transformation multiplies by -1, and the
    compiled step multiplies by the learning rate, an input (`set_learning_rate`), so a
    schedule changes it without recompiling. -u * lr is u * -lr to the bit."""
    if optim.optimizer == "rmsprop":
        tx = optax.rmsprop(1.0, decay=optim.decay_rate, eps=optim.eps, eps_in_sqrt=False)
    elif optim.optimizer == "sgd":
        tx = optax.sgd(1.0, momentum=optim.momentum or None)
    else:
        tx = optax.adam(1.0, optim.beta1, optim.beta2, eps=optim.eps)
    return optax.chain(optax.clip_by_global_norm(optim.clip_norm), tx)


def penalty_fn(config: ModelConfig, optim: OptimConfig):
    """params -> l1 * sum |W| + l2 * sum W^2 over the kernels (SPEC section 9), traced
    into the loss. |W| is written W * sign(W) with the sign held constant: the same
    value, but the gradient at 0 is sign(0) = 0 as the section asks (jnp.abs' is 1)."""
    paths = [flax_paths(config)[name] for name in config.kernel_names()]

    def penalty(params):
        p = nnx.to_pure_dict(params)
        total = 0.0
        for w in (at(p, path) for path in paths):
            if optim.l1:
                total = total + optim.l1 * jnp.sum(w * jax.lax.stop_gradient(jnp.sign(w)))
            if optim.l2:
                total = total + optim.l2 * jnp.sum(w * w)
        return total
    return penalty


def flat_names(tree) -> dict[str, object]:
    """{"lstm.0.cell.dense_h.kernel": leaf, ...}: a pytree's leaves under dotted names."""
    def part(key):
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(part(k) for k in path if part(k) != "value"): leaf
            for path, leaf in leaves}




def keep_freed_memory() -> None:
    """Serve every allocation from glibc's heap and never hand it back to the kernel.

    XLA allocates a train step's scratch (62.6 MiB at the default sizes) as one block;
    glibc serves blocks over 32 MiB with mmap and unmaps them on free, so every step
    faulted 62 MiB of fresh zeroed pages back in: a quarter of the step was in the kernel
    (`perf`: exc_page_fault, clear_page). Kept on the heap, the step measured 1.3-1.4x
    faster. No-op without glibc's mallopt.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(-4, 0)  # M_MMAP_MAX: no mmap'd blocks
        mallopt(-1, 2 ** 31 - 1)  # M_TRIM_THRESHOLD: keep freed heap memory


def mean_loss(losses) -> float:
    """The batch's mean loss in nats. The float32 per-character losses (B, T) are averaged
    in float64 on the host, as the reference does: a float32 mean of 4096 values drifts
    by several ulps, and the conformance tolerance is 1e-6."""
    return float(np.mean(np.asarray(losses), dtype=np.float64))


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class JaxCharRNN(CharRNN):
    framework = "jax"
    precisions = (FP32, BF16_MIXED)

    def __init__(self, config: ModelConfig, weights: Weights, optim: OptimConfig,
                 device: Device = CPU, seed: int = 0):
        super().__init__(config, weights, optim, device, seed)
        # This process's own device (a data-parallel world lists every process's).
        self.jax_device = jax.local_devices(backend=device.kind)[device.index]
        # eval_shape: the graph and shapes only, no throw-away random initialisation.
        # `graphdef` computes in the run's precision (training, evaluation, `forward`);
        # `graphdef32`, the same parameters in float32, generates (SPEC section 12).
        abstract = nnx.eval_shape(lambda: Net(config, nnx.Rngs(0),
                                              DOT_GENERAL[optim.precision]))
        graphdef, params = nnx.split(abstract)  # Params only: Net holds no other state
        graphdef32 = graphdef if optim.precision == FP32 else nnx.graphdef(
            nnx.eval_shape(lambda: Net(config, nnx.Rngs(0))))
        nnx.replace_by_pure_dict(params, to_flax(weights, config))
        self.params = self._put(params)
        tx = make_optimizer(optim)
        penalty = penalty_fn(config, optim)
        self.opt_state = self._put(tx.init(self.params))
        self.key = self._put(jax.random.key(seed))  # dropout; split once per train step
        self.learning_rate = np.float32(optim.learning_rate)  # set_learning_rate changes it

        def loss_fn(params, x, y, state, dropout_key=None):
            """What is differentiated (the mean loss, plus the penalties when one is on),
            and (per-character losses, new state)."""
            logits, state = nnx.merge(graphdef, params)(x, state, dropout_key)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)  # (B, T)
            objective = losses.mean() + penalty(params) if optim.penalised else losses.mean()
            return objective, (losses, state)

        def gradient(params, key, x, y, state):
            key, dropout_key = jax.random.split(key)
            (_, (losses, state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, x, y, state, dropout_key)
            return grads, key, losses, state

        def update(params, opt_state, grads, lr):
            updates, opt_state = tx.update(grads, opt_state, params)  # clip, then step
            updates = jax.tree.map(lambda u: u * lr, updates)
            return optax.apply_updates(params, updates), opt_state

        def train(params, opt_state, key, lr, x, y, state):
            grads, key, losses, state = gradient(params, key, x, y, state)
            return *update(params, opt_state, grads, lr), key, losses, state

        # One compile per input shape (training, validation and generation batches may
        # differ); params and optimiser slots are donated so XLA updates them in place. The
        # state returned is a fresh output, outside any gradient trace: truncated BPTT.
        self._train = jax.jit(train, donate_argnums=(0, 1, 2))
        if self.world.size > 1:  # the same two halves, with the world's mean between them
            self._gradient = jax.jit(gradient, donate_argnums=(1,))
            self._update = jax.jit(update, donate_argnums=(0, 1))
        self._grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
        self._eval = jax.jit(lambda *args: loss_fn(*args)[1])
        self._forward = jax.jit(lambda params, x, state: nnx.merge(graphdef, params)(x, state))
        # The one-step function takes the parameters as a flat list of arrays: flattening
        # the nnx.State at every call was ~20% of a generation step (~95 vs ~78 us).
        treedef = jax.tree.structure(self.params)
        self._step = jax.jit(lambda leaves, ids, state: nnx.merge(
            graphdef32, jax.tree.unflatten(treedef, leaves)).step(ids, state))
        self._step_leaves = (None, [])  # (the params they came from, their leaves)

    def _put(self, tree):
        return jax.device_put(tree, self.jax_device)

    # ---- data parallel: jax.distributed (docs/SPEC.md section 11) ----------------------
    @classmethod
    def init_world(cls, world: World, device: str, timeout_s: float) -> None:
        """jax.distributed's coordination service at the world's coordinator (rank 0
        serves it); on the CPU, JAX's cross-process collectives go through gloo. Before
        `setup_device`: the backend must not have started."""
        join_jax(jax, world, device, timeout_s)
        cls.world = world

    @classmethod
    def _allgather(cls, flat: np.ndarray) -> np.ndarray:
        """(n,) of each rank -> (W, n) on every rank: `process_allgather`, an XLA
        all-gather across the processes' devices."""
        return np.asarray(multihost_utils.process_allgather(flat))

    @classmethod
    def all_sum(cls, values):
        return sum_by_allgather(cls._allgather, values)

    def _world_mean(self, grads):
        """The gradients averaged over the world: each rank's is the mean over its
        equal share of the batch, so their mean is the whole batch's."""
        leaves, treedef = jax.tree.flatten(grads)
        flat = np.concatenate([np.asarray(leaf, np.float32).reshape(-1) for leaf in leaves])
        mean = self._allgather(flat).mean(axis=0, dtype=np.float64).astype(np.float32)
        sizes = np.cumsum([leaf.size for leaf in leaves])[:-1]
        return self._put(jax.tree.unflatten(treedef, [
            part.reshape(leaf.shape) for part, leaf in zip(np.split(mean, sizes), leaves)]))

    @classmethod
    def versions(cls):
        return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}

    @classmethod
    def setup_device(cls, device, threads):
        # First: jax.devices() starts the backend, and then its thread pools are fixed.
        limit_xla_threads(threads, xla_bridge.backends_are_initialized(),
                          cls.world.local_rank)
        keep_freed_memory()
        gpu_names = jax_gpu_names()
        return choose_device(device, gpu_names, "JAX sees no GPU (this jaxlib is CPU-only "
                                                "unless installed as jax[cuda12])",
                             cls.world.local_rank if len(gpu_names) > 1 else 0)

    # ---- weights ---------------------------------------------------------------------
    def get_weights(self):
        return from_flax(self.params, self.config)

    # ---- state -----------------------------------------------------------------------
    def zero_state(self, batch_size):
        shape = (self.config.num_layers, batch_size, self.config.rnn_size)
        return self._put((jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)))

    def state_to_numpy(self, state):
        return tuple(np.array(s, np.float32) for s in state)

    def state_from_numpy(self, h, c):
        h = np.asarray(h, np.float32)
        if self.config.cell != "lstm":  # no cell state: c is zeros whatever came in
            c = np.zeros_like(h)
        return self._put((h, np.asarray(c, np.float32)))

    # ---- compute ---------------------------------------------------------------------
    def forward(self, x, state):
        x = np.asarray(x, np.int32)
        logits, state = self._forward(self.params, x, state)
        return np.asarray(logits), state

    def step(self, ids, state):
        if self._step_leaves[0] is not self.params:  # new after every train step
            self._step_leaves = (self.params, jax.tree.leaves(self.params))
        logits, state = self._step(self._step_leaves[1], np.asarray(ids, np.int32), state)
        return np.asarray(logits), state

    def eval_step(self, x, y, state):
        # Only the (B, T) losses cross back, not the (B, T, V) logits.
        losses, state = self._eval(self.params, np.asarray(x, np.int32),
                                   np.asarray(y, np.int32), state)
        return mean_loss(losses), state

    def loss_and_grads(self, x, y, state):
        (_, (losses, state)), grads = self._grads(self.params, np.asarray(x, np.int32),
                                                  np.asarray(y, np.int32), state)
        return mean_loss(losses), from_flax(grads, self.config), state

    def set_learning_rate(self, learning_rate):
        self.learning_rate = np.float32(learning_rate)  # an input of the compiled step

    def train_step(self, x, y, state):
        if self.world.size > 1:
            grads, self.key, losses, state = self._gradient(
                self.params, self.key, np.asarray(x, np.int32), np.asarray(y, np.int32), state)
            self.params, self.opt_state = self._update(self.params, self.opt_state,
                                                       self._world_mean(grads),
                                                       self.learning_rate)
            return mean_loss(losses), state
        self.params, self.opt_state, self.key, losses, state = self._train(
            self.params, self.opt_state, self.key, self.learning_rate,
            np.asarray(x, np.int32), np.asarray(y, np.int32), state)
        return mean_loss(losses), state  # reading the losses waits for the device

    # ---- native checkpoints ------------------------------------------------------------
    # Flax-layout parameters, every leaf of the Optax state (Adam's count, mu, nu; RMSprop's
    # nu; SGD's momentum trace) and the raw PRNG key, as named arrays in one safetensors
    # file: no pickle, no extra dependency, and a resume continues bit-for-bit. (Orbax
    # would add a heavy import and its own directory management on top of common/'s
    # atomic checkpoint directories.)
    def save_native(self, directory: Path):
        arrays = {f"params.{n}": a for n, a in flat_names(self.params).items()}
        arrays.update({f"opt.{n}": a for n, a in flat_names(self.opt_state).items()})
        arrays["rng_key"] = jax.random.key_data(self.key)  # (2,) uint32, default threefry
        arrays = {n: np.array(a) for n, a in arrays.items()}  # keeps Adam's 0-d count 0-d
        safetensors.numpy.save_file(arrays, str(directory / "jax_model.safetensors"))

    def load_native(self, directory: Path):
        arrays = safetensors.numpy.load_file(str(directory / "jax_model.safetensors"))

        def restore(template, prefix):
            names = flat_names(template)
            missing = [n for n in names if f"{prefix}.{n}" not in arrays]
            if missing:
                raise CharRnnError(f"{directory}: native checkpoint lacks "
                                   f"{prefix}.{missing[0]}")
            leaves = [np.asarray(arrays[f"{prefix}.{n}"], leaf.dtype).reshape(leaf.shape)
                      for n, leaf in names.items()]  # same shapes and dtypes: no recompile
            return self._put(jax.tree.unflatten(jax.tree.structure(template), leaves))

        self.params = restore(self.params, "params")
        self.opt_state = restore(self.opt_state, "opt")
        self.key = self._put(jax.random.wrap_key_data(arrays["rng_key"]))


MODEL = JaxCharRNN  # what charrnn.common.registry loads


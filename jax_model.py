"""JAX + Flax NNX + Optax: `nnx.RNN` over `nnx.OptimizedLSTMCell`, each step one `jax.jit`.

    python jax_model.py train --num-epochs 1
    python jax_model.py generate --seed "KING"

Flax NNX is the API Flax recommends for new code (Linen stays supported). The network
is built once as an abstract graph; its weights live in an `nnx.State` pytree that
Optax updates, and every compiled function is a plain `jax.jit` of (graphdef, params),
so no NNX bookkeeping runs per call. The time loop is the `jax.lax.scan` inside
`nnx.RNN`. The whole train step (forward, loss, grad, clip, Adam, the dropout key
split) is one compiled call.
"""

from common.bootstrap import early_setup

early_setup(__file__)  # XLA reads XLA_FLAGS when its backend starts, not at import

import ctypes
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import safetensors.numpy
from flax import nnx
from jax._src import xla_bridge  # no public "has the backend started" query

from common.cli import main
from common.config import ModelConfig, OptimConfig
from common.errors import CharRnnError
from common.framework import CPU, CharRNN, Device, choose_device
from common.threads import limit_xla_threads
from common.weights import Weights, in_out_layout

# ---------------------------------------------------------------------------------------
# Network. Shapes: B batch_size, T seq_len, E embedding_size, H rnn_size, V vocab_size.
# ---------------------------------------------------------------------------------------


class Net(nnx.Module):
    """Embedding -> num_layers x LSTM -> Dense, inverted dropout after all but the Dense.

    OptimizedLSTMCell holds one (in, 4H) input kernel and one (H, 4H) recurrent kernel
    with the bias, gates i, f, g, o side by side: the canonical layout transposed. (The
    per-gate `nnx.LSTMCell` computes the same thing with eight (in, H) matrices; it
    measured no faster here, and its one-step path runs four times the matmuls.)
    """

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        E, H = config.embedding_size, config.rnn_size
        self.embedding = nnx.Embed(config.vocab_size, E, rngs=rngs)
        self.drop = nnx.Dropout(config.drop_rate)  # no stored RNG: keys come per call
        # rngs=False: the carry is always passed in, so nnx.RNN needs no RNG state.
        self.lstm = nnx.List([
            nnx.RNN(nnx.OptimizedLSTMCell(E if k == 0 else H, H, rngs=rngs),
                    return_carry=True, rngs=False)
            for k in range(config.num_layers)])
        self.dense = nnx.Linear(H, config.vocab_size, rngs=rngs)

    def _drop(self, a, key):
        return a if key is None else self.drop(a, rngs=key)

    def __call__(self, x, state, dropout_key=None):
        """x (B, T) int32, state (h, c) each (L, B, H) -> logits (B, T, V), new state.

        Dropout is on when `dropout_key` is given: one key per dropout site.
        """
        h0, c0 = state
        keys = [None] * (len(self.lstm) + 1)
        if dropout_key is not None:
            keys = list(jax.random.split(dropout_key, len(self.lstm) + 1))
        out = self._drop(self.embedding(x), keys[0])  # (B, T, E)
        hs, cs = [], []
        for k, rnn in enumerate(self.lstm):
            # Flax carries (c, h), the reverse of PyTorch's (h, c).
            (c, h), out = rnn(out, initial_carry=(c0[k], h0[k]))  # out (B, T, H)
            out = self._drop(out, keys[k + 1])
            hs.append(h)
            cs.append(c)
        return self.dense(out), (jnp.stack(hs), jnp.stack(cs))

    def step(self, ids, state):
        """One generation step without the scan: ids (B,) -> logits (B, V), new state."""
        h0, c0 = state
        out = self.embedding(ids)  # (B, E)
        hs, cs = [], []
        for k, rnn in enumerate(self.lstm):
            (c, h), out = rnn.cell((c0[k], h0[k]), out)
            hs.append(h)
            cs.append(c)
        return self.dense(out), (jnp.stack(hs), jnp.stack(cs))


def flax_paths(num_layers: int) -> dict[str, tuple]:
    """Canonical name -> its path in the pure-dict form of Net's nnx.State."""
    paths = {"embedding": ("embedding", "embedding"), "dense.w": ("dense", "kernel"),
             "dense.b": ("dense", "bias")}
    for k in range(num_layers):
        cell = ("lstm", k, "cell")
        paths |= {f"lstm.{k}.w_ih": (*cell, "dense_i", "kernel"),  # (in, 4H)
                  f"lstm.{k}.w_hh": (*cell, "dense_h", "kernel"),  # (H, 4H)
                  f"lstm.{k}.bias": (*cell, "dense_h", "bias")}
    return paths


def to_flax(w: Weights, num_layers: int) -> dict:
    """Canonical weights -> the pure-dict form of Net's nnx.State."""
    tree: dict = {}
    for name, path in flax_paths(num_layers).items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = in_out_layout(name, w[name])
    return tree


def from_flax(tree: nnx.State, num_layers: int) -> Weights:
    """Inverse of `to_flax`, for weights and gradients alike, as float32 NumPy copies."""
    p = nnx.to_pure_dict(tree)
    w = {}
    for name, path in flax_paths(num_layers).items():
        node = p
        for key in path:
            node = node[key]
        w[name] = np.ascontiguousarray(in_out_layout(name, np.array(node, np.float32)))
    return w


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

    def __init__(self, config: ModelConfig, weights: Weights, optim: OptimConfig,
                 device: Device = CPU, seed: int = 0):
        super().__init__(config, weights, optim, device, seed)
        self.jax_device = jax.devices(device.kind)[device.index]  # kind "cpu" or "gpu"
        # eval_shape: the graph and shapes only, no throw-away random initialisation.
        abstract = nnx.eval_shape(lambda: Net(config, nnx.Rngs(0)))
        graphdef, params = nnx.split(abstract)  # Params only: Net holds no other state
        nnx.replace_by_pure_dict(params, to_flax(weights, config.num_layers))
        self.params = self._put(params)
        # optax's adam is the PyTorch formula (bias-corrected, eps outside the sqrt).
        tx = optax.chain(optax.clip_by_global_norm(optim.clip_norm),
                         optax.adam(optim.learning_rate, optim.beta1, optim.beta2,
                                    eps=optim.eps))
        self.opt_state = self._put(tx.init(self.params))
        self.key = self._put(jax.random.key(seed))  # dropout; split once per train step

        def loss_fn(params, x, y, state, dropout_key=None):
            """Mean loss (what is differentiated), and (per-character losses, new state)."""
            logits, state = nnx.merge(graphdef, params)(x, state, dropout_key)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)  # (B, T)
            return losses.mean(), (losses, state)

        def train(params, opt_state, key, x, y, state):
            key, dropout_key = jax.random.split(key)
            (_, (losses, state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, x, y, state, dropout_key)
            updates, opt_state = tx.update(grads, opt_state, params)  # clip, then Adam
            return optax.apply_updates(params, updates), opt_state, key, losses, state

        # One compile per input shape (training, validation and generation batches may
        # differ); params and Adam moments are donated so XLA updates them in place. The
        # state returned is a fresh output, outside any gradient trace: truncated BPTT.
        self._train = jax.jit(train, donate_argnums=(0, 1, 2))
        self._grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
        self._eval = jax.jit(lambda *args: loss_fn(*args)[1])
        self._forward = jax.jit(lambda params, x, state: nnx.merge(graphdef, params)(x, state))
        # The one-step function takes the parameters as a flat list of arrays: flattening
        # the nnx.State at every call was ~20% of a generation step (~95 vs ~78 us).
        treedef = jax.tree.structure(self.params)
        self._step = jax.jit(lambda leaves, ids, state: nnx.merge(
            graphdef, jax.tree.unflatten(treedef, leaves)).step(ids, state))
        self._step_leaves = (None, [])  # (the params they came from, their leaves)

    def _put(self, tree):
        return jax.device_put(tree, self.jax_device)

    @classmethod
    def versions(cls):
        return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}

    @classmethod
    def setup_device(cls, device, threads):
        # First: jax.devices() starts the backend, and then its thread pools are fixed.
        limit_xla_threads(threads, xla_bridge.backends_are_initialized())
        keep_freed_memory()
        try:
            gpu_names = [d.device_kind for d in jax.devices("gpu")]
        except RuntimeError:  # no GPU platform in this jaxlib
            gpu_names = []
        return choose_device(device, gpu_names, "JAX sees no GPU (this jaxlib is CPU-only "
                                                "unless installed as jax[cuda12])")

    # ---- weights ---------------------------------------------------------------------
    def get_weights(self):
        return from_flax(self.params, self.config.num_layers)

    # ---- state -----------------------------------------------------------------------
    def zero_state(self, batch_size):
        shape = (self.config.num_layers, batch_size, self.config.rnn_size)
        return self._put((jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)))

    def state_to_numpy(self, state):
        return tuple(np.array(s, np.float32) for s in state)

    def state_from_numpy(self, h, c):
        return self._put((np.asarray(h, np.float32), np.asarray(c, np.float32)))

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
        return mean_loss(losses), from_flax(grads, self.config.num_layers), state

    def train_step(self, x, y, state):
        self.params, self.opt_state, self.key, losses, state = self._train(
            self.params, self.opt_state, self.key, np.asarray(x, np.int32),
            np.asarray(y, np.int32), state)
        return mean_loss(losses), state  # reading the losses waits for the device

    # ---- native checkpoints ------------------------------------------------------------
    # Flax-layout parameters, every leaf of the Optax state (Adam count, mu, nu) and the raw
    # PRNG key, as named arrays in one safetensors file: no pickle, no extra dependency,
    # and a resume continues bit-for-bit. (Orbax would add a heavy import and its own
    # directory management on top of common/'s atomic checkpoint directories.)
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


MODEL = JaxCharRNN  # what common.registry loads

if __name__ == "__main__":
    main(MODEL)

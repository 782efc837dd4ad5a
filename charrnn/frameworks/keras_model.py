"""Keras 3: `Embedding`, `LSTM` (`GRU`, `SimpleRNN`) and `Dense` layers, one file for the
TensorFlow, JAX and PyTorch backends (chosen the Keras way, with KERAS_BACKEND;
TensorFlow by default).

    python keras_model.py train --num-epochs 1
    KERAS_BACKEND=jax python keras_model.py train --cell gru --optimizer rmsprop --l2 1e-5
    KERAS_BACKEND=jax python keras_model.py generate --seed "KING"

The (h, c) state is an explicit input and output of the functional model rather than
`stateful=True` layers: stateful layers fix the batch size in their state variables,
while the same model must also evaluate and generate with any batch (the training loop
samples one text after each epoch). Keras' Adam, RMSprop and SGD are subclassed to
update as SPEC sections 4 and 9 (and PyTorch) do, with charrnn.common.optim's formulas;
--l1 and --l2 are Keras regularizers.
`fit` cannot return the carried state, so each backend computes gradients its own way
(GradientTape, jax.grad, autograd); everything else (layers, loss, optimizer, clipping,
penalties, saving) is backend-agnostic Keras.

`--precision bf16-mixed` (SPEC section 12) is Keras' `mixed_bfloat16` dtype policy on the
recurrent and dense layers, their outputs widened to float32. It computes more in bf16
than the section asks (the gates' elementwise maths, h and c at every step, the initial
state, the logits and bias, and the backward of all of it); docs/FRAMEWORKS.md gives
its measured distance from the emulation on each backend. Generation calls the cells and
the dense layer's `call` outside the policy's autocast scope: float32.
"""


import functools
import itertools
import json
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from charrnn.common.config import BF16_MIXED, FP32, ModelConfig, OptimConfig
from charrnn.common.distributed import World, join_jax, sum_by_allgather
from charrnn.common.framework import CPU, CharRNN, Device, choose_device
from charrnn.common.gpus import jax_gpu_names, tf_gpu_names, torch_gpu_names
from charrnn.common.graph_loop import TFStepLoop
from charrnn.common.optim import adam_update, rmsprop_update, sgd_update
from charrnn.common.threads import limit_xla_threads, set_tf_threads
from charrnn.common.weights import Weights, in_out_layout

BACKEND = keras.backend.backend()  # "tensorflow", "jax" or "torch"
if BACKEND == "tensorflow":
    import tensorflow as tf
elif BACKEND == "jax":
    import jax
    from jax._src import xla_bridge  # no public "has the backend started" query
    from jax.experimental import multihost_utils
elif BACKEND == "torch":
    import torch

# ---------------------------------------------------------------------------------------
# Network. Shapes: B batch_size, T seq_len, H rnn_size, V vocab_size, L num_layers.
# ---------------------------------------------------------------------------------------

# Each cell's Keras layer (SPEC section 8: the GRU is Keras' reset_after=True, PyTorch's
# formulation) and the names of its states: the LSTM carries h and c, the others h alone.
RECURRENT = {"lstm": (layers.LSTM, ("h", "c")),
             "gru": (functools.partial(layers.GRU, reset_after=True), ("h",)),
             "rnn": (layers.SimpleRNN, ("h",))}


def build_net(config: ModelConfig, optim: OptimConfig, seed: int) -> keras.Model:
    """[x (B, T) int32, then the states, each (B, H): h_0..h_L-1 (and c_0..c_L-1 for the
    LSTM)] -> [logits (B, T, V), the new states in the same order].

    --l1 and --l2 are the kernels' Keras regularizers, whose losses the gradient functions
    add to the cross-entropy (L1L2 is l1 * sum|W| + l2 * sum W^2, SPEC section 9's
    penalty); unpenalised layers have none, so cost nothing."""
    L, H = config.num_layers, config.rnn_size
    layer_cls, state_names = RECURRENT[config.cell]
    penalty = keras.regularizers.L1L2(optim.l1, optim.l2) if optim.penalised else None
    # Zeros and seeds, not random draws: the portable weights are assigned right after,
    # and in a data-parallel world Keras refuses a replicated variable whose first value
    # differs between the ranks ("passed to device_put is not the same on each process";
    # the recurrent layers' own seed generator, unused without their dropout, included).
    zeros = {"kernel_initializer": "zeros", "bias_initializer": "zeros"}
    # bf16-mixed: Keras' mixed_bfloat16 policy on the recurrent and dense layers (float32
    # variables, bf16 inputs and maths); their bf16 outputs are widened to float32 before
    # the loss and the carried state. The embedding and dropout stay float32.
    bf16 = optim.precision == BF16_MIXED
    policy = "mixed_bfloat16" if bf16 else None

    def widen(a):
        return ops.cast(a, "float32") if bf16 else a
    x = keras.Input((None,), dtype="int32", name="x")
    state_in = [keras.Input((H,), name=f"{s}_{k}") for s in state_names for k in range(L)]
    out = layers.Embedding(config.vocab_size, config.embedding_size,
                           embeddings_initializer="zeros", name="embedding")(x)
    out = layers.Dropout(config.drop_rate, seed=seed, name="dropout_0")(out)
    state_out = []  # per layer: [h] or [h, c]
    for k in range(L):
        rnn = layer_cls(H, return_sequences=True, return_state=True, name=f"{config.cell}_{k}",
                        kernel_regularizer=penalty, recurrent_regularizer=penalty,
                        recurrent_initializer="zeros", seed=seed, dtype=policy, **zeros)
        out, *state = rnn(out, initial_state=state_in[k::L])  # out (B, T, H)
        out = layers.Dropout(config.drop_rate, seed=seed + k + 1, name=f"dropout_{k + 1}")(out)
        state_out.append([widen(s) for s in state])
    logits = layers.Dense(config.vocab_size, kernel_regularizer=penalty, name="dense",
                          dtype=policy, **zeros)(out)
    logits = widen(logits)
    return keras.Model([x, *state_in], [logits, *itertools.chain(*zip(*state_out))],
                       name="char_rnn")


def native_places(config: ModelConfig) -> dict[str, tuple[str, int, int | None]]:
    """The canonical<->Keras name map: canonical name -> (layer name, index in its
    trainable weights, row of that weight or None). The GRU's two biases are the rows of
    Keras' one (2, 3H) bias, input bias first; the layouts differ as `in_out_layout` and
    `keras_gates` say."""
    places = {"embedding": ("embedding", 0, None), "dense.w": ("dense", 0, None),
              "dense.b": ("dense", 1, None)}
    for k in range(config.num_layers):
        layer, native = config.layer(k), f"{config.cell}_{k}"
        places |= {f"{layer}.w_ih": (native, 0, None),  # kernel
                   f"{layer}.w_hh": (native, 1, None)}  # recurrent kernel
        if config.cell == "gru":
            places |= {f"{layer}.b_ih": (native, 2, 0), f"{layer}.b_hh": (native, 2, 1)}
        else:
            places[f"{layer}.bias"] = (native, 2, None)
    return places


def keras_gates(name: str, a: np.ndarray) -> np.ndarray:
    """A GRU array in the (in, out) layout with its gate blocks swapped between the
    canonical r, z, n and Keras' z, r, h (the gate axis is the last; the swap is its own
    inverse). The LSTM and the RNN share the canonical order: unchanged."""
    if not name.startswith("gru."):
        return a
    H = a.shape[-1] // 3
    return np.concatenate([a[..., H:2 * H], a[..., :H], a[..., 2 * H:]], axis=-1)


def to_numpy(a) -> np.ndarray:
    """A backend tensor or Keras variable as NumPy (ops.convert_to_numpy goes through an
    __array__ that NumPy 2 warns about on the TensorFlow and PyTorch backends)."""
    a = a.value if isinstance(a, keras.Variable) else a
    if hasattr(a, "detach"):  # torch
        a = a.detach().cpu()
    return np.asarray(a.numpy() if hasattr(a, "numpy") else a)


def mean_cross_entropy(logits, y):
    return ops.mean(ops.sparse_categorical_crossentropy(y, logits, from_logits=True))


def objective(loss, penalties):
    """What training minimises: the cross-entropy `loss` (what is returned and logged),
    plus the regularizers' losses, the --l1/--l2 penalty, when the model has any."""
    return loss + sum(penalties) if penalties else loss


class TorchAdam(keras.optimizers.Adam):
    """Adam with PyTorch's epsilon placement, p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).

    Keras' own folds the corrections into the step size and adds eps to sqrt(v)
    uncorrected, which differs while 1-b2^t is small."""

    def update_step(self, gradient, variable, learning_rate):
        # t and the bias corrections in the variable's float32 (JAX keeps float64 off).
        dtype = variable.dtype
        i = self._get_variable_index(variable)
        m, v = self._momentums[i], self._velocities[i]
        new = adam_update(ops, variable, ops.cast(gradient, dtype), m, v,
                          ops.cast(self.iterations + 1, dtype), ops.cast(learning_rate, dtype),
                          self.beta_1, self.beta_2, self.epsilon)
        for target, value in zip((variable, m, v), new):
            self.assign(target, value)


class TorchRMSprop(keras.optimizers.RMSprop):
    """RMSprop as SPEC section 9 (and PyTorch) write it, v = rho v + (1 - rho) g^2,
    p -= lr g / (sqrt(v) + eps).

    Keras' own divides by sqrt(v + eps), eps inside the square root: with eps 1e-8 that is
    a floor of 1e-4 under the denominator, far from section 9's wherever v is small."""

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        v = self._velocities[self._get_variable_index(variable)]
        new = rmsprop_update(ops, variable, ops.cast(gradient, dtype), v,
                             ops.cast(learning_rate, dtype), self.rho, self.epsilon)
        for target, value in zip((variable, v), new):
            self.assign(target, value)


class TorchSGD(keras.optimizers.SGD):
    """SGD with PyTorch's momentum, b = momentum b + g, p -= lr b (SPEC section 9).

    Keras' own keeps m = momentum m - lr g and adds it: the same steps while the learning
    rate stays fixed (its 20-step conformance curve is within 1.1e-6 of NumPy's, like this
    one's), but its buffer carries the learning rates of the steps that filled it, so a
    run resumed with another --learning-rate would move otherwise than section 9 says.
    Without momentum both are p -= lr g: Keras' own step is kept."""

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        b = self.momentums[self._get_variable_index(variable)]
        new = sgd_update(variable, ops.cast(gradient, dtype), b, ops.cast(learning_rate, dtype),
                         self.momentum)
        for target, value in zip((variable, b), new):
            self.assign(target, value)


def build_optimizer(optim: OptimConfig) -> keras.optimizers.Optimizer:
    """The optimiser of `optim`, with global-norm clipping (not per-tensor clipnorm) over
    the whole gradient, penalties included."""
    common = {"learning_rate": optim.learning_rate, "global_clipnorm": optim.clip_norm}
    if optim.optimizer == "adam":
        return TorchAdam(beta_1=optim.beta1, beta_2=optim.beta2, epsilon=optim.eps, **common)
    if optim.optimizer == "rmsprop":
        return TorchRMSprop(rho=optim.decay_rate, epsilon=optim.eps, **common)
    return TorchSGD(momentum=optim.momentum, **common)


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class KerasCharRNN(CharRNN):
    framework = "keras"
    precisions = (FP32, BF16_MIXED)
    # The JAX backend trains data-parallel through keras.distribution (below); the others
    # would need their own engine around this file's step.
    data_parallel_refusal = (f"not implemented for Keras' {BACKEND} backend here (only "
                             "KERAS_BACKEND=jax, through keras.distribution.DataParallel); "
                             "train data-parallel with tf_model.py or pytorch_model.py")

    def __init__(self, config: ModelConfig, weights: Weights, optim: OptimConfig,
                 device: Device = CPU, seed: int = 0):
        super().__init__(config, weights, optim, device, seed)
        # No ":0" for torch: its variables are moved with .to("cpu:0"), which returns a plain
        # tensor instead of the Parameter, and integer seed variables then fail to build.
        # In a world, "cpu:0" would name rank 0's device (JAX numbers devices globally):
        # this process's own jax.Device instead.
        self.keras_device = (device.kind if BACKEND == "torch"
                             else jax.local_devices(backend=device.kind)[device.index]
                             if self.world.size > 1 else f"{device.kind}:{device.index}")
        with keras.device(self.keras_device):
            self.net = build_net(config, optim, seed)
            self.optimizer = build_optimizer(optim)
            self._load_canonical(weights)
            self.optimizer.build(self.net.trainable_variables)
        # So the weights file holds the optimiser's state (slots and iterations) too.
        self.net.compile(optimizer=self.optimizer)
        self.dropouts = [layer for layer in self.net.layers if isinstance(layer, layers.Dropout)]
        self.cells = [self.net.get_layer(f"{config.cell}_{k}").cell
                      for k in range(config.num_layers)]
        getattr(self, f"_compile_{BACKEND}")()

    # ---- weights: canonical <-> Keras, through `native_places`, `in_out_layout` and
    # ---- `keras_gates` -----------------------------------------------------------------
    def _load_canonical(self, w: Weights):
        """Assign the canonical weights, and keep where each canonical array lives:
        `self.places`, name -> (position in `net.trainable_variables`, the order of the
        gradients; row of that variable or None)."""
        variables = self.net.trainable_variables
        position = {id(v): j for j, v in enumerate(variables)}
        self.places, values = {}, {}
        for name, (layer, i, row) in native_places(self.config).items():
            variable = self.net.get_layer(layer).trainable_weights[i]
            j = position[id(variable)]
            self.places[name] = (j, row)
            a = keras_gates(name, in_out_layout(name, w[name]))
            if row is None:
                values[j] = a
            else:
                values.setdefault(j, np.empty(variable.shape, np.float32))[row] = a
        for j, variable in enumerate(variables):
            variable.assign(values[j])  # a KeyError: the map above missed a variable

    def _canonical(self, arrays) -> Weights:
        """Arrays in `net.trainable_variables` order -> canonical names and layout."""
        arrays = [to_numpy(a).astype(np.float32) for a in arrays]
        return {name: in_out_layout(name, keras_gates(
                    name, arrays[j] if row is None else arrays[j][row])).copy()
                for name, (j, row) in self.places.items()}

    def get_weights(self):
        return self._canonical(self.net.trainable_variables)

    # ---- environment -----------------------------------------------------------------
    @classmethod
    def versions(cls):
        lib = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[BACKEND]
        return {"keras": keras.__version__, "backend": BACKEND,
                lib: __import__(lib).__version__}

    @classmethod
    def setup_device(cls, device, threads):
        index = 0  # which of the GPUs: a data-parallel rank's own (jax backend)
        if BACKEND == "tensorflow":
            set_tf_threads(tf, threads)
            gpu_names = tf_gpu_names()
        elif BACKEND == "jax":
            limit_xla_threads(threads, xla_bridge.backends_are_initialized(),  # before devices()
                              cls.world.local_rank)
            gpu_names = jax_gpu_names()
            index = cls.world.local_rank if len(gpu_names) > 1 else 0
        else:
            if threads:
                torch.set_num_threads(threads)
            gpu_names = torch_gpu_names()
        chosen = choose_device(device, gpu_names, f"Keras' {BACKEND} backend sees no GPU (a "
                                                  f"CPU-only {BACKEND} build, or no GPU driver)",
                               index)
        if cls.world.size > 1:
            cls._set_distribution(jax.local_devices(backend=chosen.kind)[chosen.index])
        return chosen

    # ---- data parallel, jax backend: keras.distribution (docs/SPEC.md section 11) -----
    @classmethod
    def init_world(cls, world: World, device: str, timeout_s: float) -> None:
        """jax.distributed's coordination service at the world's coordinator; on the CPU,
        JAX's cross-process collectives go through gloo. Not keras.distribution.initialize,
        which calls the same jax.distributed.initialize, but with no timeout, and then
        psums a random seed with jax.pmap, starting the backend before `setup_device`
        can pin its threads."""
        if BACKEND != "jax":
            super().init_world(world, device, timeout_s)  # refuses
        join_jax(jax, world, device, timeout_s)
        cls.world = world

    @classmethod
    def _set_distribution(cls, local_device) -> None:
        """keras.distribution.DataParallel over one device per rank, each rank's chosen one
        (learnt from the others through `all_sum`), in rank order: every Keras variable
        created afterwards is a global jax.Array replicated on them, and a batch laid out
        on its `batch` axis is rank r's rows [r B/W, (r+1) B/W). The file's own jitted
        step then runs as one SPMD program whose gradient of the whole batch's mean loss
        XLA all-reduces before the optimizer clips it."""
        ids = np.zeros(cls.world.size)
        ids[cls.world.rank] = local_device.id
        by_id = {d.id: d for d in jax.devices(local_device.platform)}
        devices = [by_id[int(i)] for i in cls.all_sum(ids)]
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))

    @classmethod
    def all_sum(cls, values):
        return sum_by_allgather(multihost_utils.process_allgather, values)

    def _step_fn(self, ids, *state):
        """ids (B,) int32 and the states (B, H) in `build_net`'s order -> logits (B, V),
        then the new states: one character through the model's own layers and their
        cells (LSTMCell, GRUCell, SimpleRNNCell), without the functional graph and the
        recurrent layer's time loop. `call`, not `__call__`: on the torch backend, where
        it runs eagerly, the wrapper cost a third of the step."""
        L = self.config.num_layers
        out = self.net.get_layer("embedding").call(ids)  # (B, E)
        new_state = []  # per layer: [h] or [h, c]
        for k, cell in enumerate(self.cells):
            out, layer_state = cell.call(out, list(state[k::L]))
            new_state.append(layer_state)
        return self.net.get_layer("dense").call(out), *itertools.chain(*zip(*new_state))

    # ---- compiled functions, one small branch per backend. x, y (B, T) int32;
    # ---- state = (h_0..h_L-1, and c_0..c_L-1 for the LSTM), each (B, H) backend tensors;
    # ---- the objective adds the regularizers' losses (the penalty) when there are any. --
    def _compile_tensorflow(self):
        net, opt = self.net, self.optimizer

        def grads(x, y, state, training):
            with tf.GradientTape() as tape:
                logits, *state = net([x, *state], training=training)
                loss = mean_cross_entropy(logits, y)
                total = objective(loss, net.losses)
            # The embedding's gradient comes as IndexedSlices; the optimiser wants it dense.
            g = [tf.convert_to_tensor(g) for g in tape.gradient(total, net.trainable_variables)]
            return loss, g, state

        def train(x, y, state):
            loss, g, state = grads(x, y, state, True)
            opt.apply(g, net.trainable_variables)  # global-norm clip, then the update
            return loss, state

        def evaluate(x, y, state):
            logits, *state = net([x, *state])
            return mean_cross_entropy(logits, y), state

        ids = tf.TensorSpec([None, None], tf.int32)
        state = [tf.TensorSpec([None, self.config.rnn_size], tf.float32)] * len(
            self.net.inputs[1:])  # one per state input of the model
        # jit_compile=False: as in tf_model.py, XLA's CPU while loop measured slower here.
        self._train = tf.function(train, input_signature=[ids, ids, state])
        self._grads = tf.function(lambda x, y, s: grads(x, y, s, False),
                                  input_signature=[ids, ids, state])
        self._eval = tf.function(evaluate, input_signature=[ids, ids, state])
        self._forward = tf.function(lambda x, s: net([x, *s]), input_signature=[ids, state])
        # Called as the tf.function: its ConcreteFunction was 4x slower to call here (2.4
        # against 0.58 ms a character), unlike tf_model.py's, where it is the faster one.
        self._step = tf.function(self._step_fn, input_signature=[
            tf.TensorSpec([None], tf.int32), *state])
        # `generate` runs the same layer calls in one tf.while_loop, the sampler called back
        # from inside (common.graph_loop).
        self._steps = TFStepLoop(tf, self._step_fn, state)

    def _compile_jax(self):
        # JAX is functional: variables go in as arrays (stateless_call, stateless_apply) and
        # the new values are assigned back to the Keras variables after each step.
        net, opt = self.net, self.optimizer

        def objective_fn(tv, ntv, x, y, state, training):
            (logits, *state), ntv, penalties = net.stateless_call(
                tv, ntv, [x, *state], training=training, return_losses=True)
            loss = mean_cross_entropy(logits, y)
            return objective(loss, penalties), (loss, state, ntv)

        value_and_grad = jax.value_and_grad(objective_fn, has_aux=True)

        @jax.jit
        def train(tv, ntv, ov, x, y, state):
            (_, (loss, state, ntv)), g = value_and_grad(tv, ntv, x, y, state, True)
            tv, ov = opt.stateless_apply(ov, g, tv)
            return loss, state, tv, ntv, ov

        @jax.jit
        def grads(tv, ntv, x, y, state):
            (_, (loss, state, _)), g = value_and_grad(tv, ntv, x, y, state, False)
            return loss, g, state

        @jax.jit
        def evaluate(tv, ntv, x, y, state):
            (logits, *state), _ = net.stateless_call(tv, ntv, [x, *state])
            return mean_cross_entropy(logits, y), state

        @jax.jit
        def step(tv, ids, *state):
            with keras.StatelessScope(state_mapping=list(zip(net.trainable_variables, tv))):
                return self._step_fn(ids, *state)

        @jax.jit
        def forward(tv, ntv, x, state):
            return net.stateless_call(tv, ntv, [x, *state])[0]

        def values(variables):
            return [v.value for v in variables]

        world = self.world.size > 1
        if world:  # the variables are global arrays, replicated on every rank's device
            def local_values(variables):  # this rank's replica: evaluation and sampling
                return [v.value.addressable_data(0) for v in variables]  # run alone

            def rows(a):  # this rank's (B/W, ...) rows -> the global (B, ...) batch
                layout = keras.distribution.distribution().get_data_layout(a.shape)
                return jax.make_array_from_process_local_data(layout.backend_layout, a)
        else:
            local_values, rows = values, None

        def run_train(x, y, state):
            if world:
                x, y, state = rows(x), rows(y), [rows(s) for s in state]
            loss, state, tv, ntv, ov = train(values(net.trainable_variables),
                                             values(net.non_trainable_variables),
                                             values(opt.variables), x, y, state)
            for group, new in ((net.trainable_variables, tv), (net.non_trainable_variables, ntv),
                               (opt.variables, ov)):
                for variable, value in zip(group, new):
                    variable.assign(value)
            if world:  # the loss is the whole batch's, the same on every rank
                state = [s.addressable_data(0) for s in state]
            return loss, state

        def with_values(fn):
            def call(*args):
                return fn(local_values(net.trainable_variables),
                          local_values(net.non_trainable_variables), *args)
            return call

        self._train = run_train
        self._grads = with_values(grads)
        self._eval = with_values(evaluate)
        self._forward = with_values(forward)
        self._step_values = lambda: local_values(net.trainable_variables)
        self._step_jit = step
        self._step = lambda ids, *state: step(self._step_values(), ids, *state)

    def _compile_torch(self):
        # Eager PyTorch, the way Keras' torch backend runs: autograd, then the optimizer
        # under no_grad. Keras' torch LSTM runs a Python loop over time steps on the CPU.
        net, opt = self.net, self.optimizer

        def grads(x, y, state, training):
            net.zero_grad()
            logits, *state = net([x, *state], training=training)
            loss = mean_cross_entropy(logits, y)
            objective(loss, net.losses).backward()
            return loss.detach(), [v.value.grad for v in net.trainable_variables], [
                s.detach() for s in state]

        def train(x, y, state):
            loss, g, state = grads(x, y, state, True)
            with torch.no_grad():
                opt.apply(g, net.trainable_variables)
            return loss, state

        @torch.no_grad()
        def evaluate(x, y, state):
            logits, *state = net([x, *state])
            return mean_cross_entropy(logits, y), state

        self._train = train
        self._grads = lambda x, y, s: grads(x, y, s, False)
        self._eval = evaluate
        self._forward = torch.no_grad()(lambda x, s: net([x, *s]))
        self._step = torch.no_grad()(self._step_fn)

    # ---- state -----------------------------------------------------------------------
    def zero_state(self, batch_size):
        zeros = np.zeros((batch_size, self.config.rnn_size), np.float32)
        return self.state_from_numpy(*([np.stack([zeros] * self.config.num_layers)] * 2))

    def state_to_numpy(self, state):
        L = self.config.num_layers
        h = np.stack([to_numpy(s) for s in state[:L]])
        # GRU and RNN carry no cell state: their c is zeros (SPEC section 10).
        return h, np.stack([to_numpy(s) for s in state[L:]]) if state[L:] else np.zeros_like(h)

    def state_from_numpy(self, h, c):
        states = [*h, *c] if self.config.cell == "lstm" else [*h]  # GRU and RNN ignore c
        with keras.device(self.keras_device):
            return tuple(ops.convert_to_tensor(np.asarray(s, np.float32)) for s in states)

    # ---- compute ---------------------------------------------------------------------
    def _ids(self, a):
        with keras.device(self.keras_device):
            return ops.convert_to_tensor(np.asarray(a, np.int32))

    def forward(self, x, state):
        logits, *state = self._forward(self._ids(x), list(state))
        return to_numpy(logits), tuple(state)

    def step(self, ids, state):
        # `_step_fn`, traced (TF) or compiled (JAX) once; never `model.predict`. Against the
        # compiled forward at seq_len 1 (the functional model's graph): 0.58 against 0.78 ms
        # a character on TensorFlow, 0.10 against 0.24 ms on JAX, on a loaded machine.
        logits, *state = self._step(self._ids(ids), *state)
        return to_numpy(logits), tuple(state)

    def steps(self, ids, state, count, choose):
        if BACKEND == "tensorflow":  # one tf.while_loop (common.graph_loop)
            with keras.device(self.keras_device):
                return tuple(self._steps(ids, state, count, choose))
        if BACKEND == "jax":  # the compiled step, with the variables' values taken once
            values, state = self._step_values(), list(state)
            for t in range(count):
                logits, *state = self._step_jit(values, np.asarray(ids, np.int32), *state)
                ids = choose(np.asarray(logits), t)
            return tuple(state)
        return super().steps(ids, state, count, choose)  # torch: the loop over `step`

    def loss_and_grads(self, x, y, state):
        loss, g, state = self._grads(self._ids(x), self._ids(y), list(state))
        return float(loss), self._canonical(g), tuple(state)

    def set_learning_rate(self, learning_rate):
        # A Keras variable (in opt.variables, so the JAX step takes it as an input).
        self.optimizer.learning_rate = learning_rate

    def train_step(self, x, y, state):
        loss, state = self._train(self._ids(x), self._ids(y), list(state))
        return float(loss), tuple(state)  # float() waits for the device

    def eval_step(self, x, y, state):
        loss, state = self._eval(self._ids(x), self._ids(y), list(state))
        return float(loss), tuple(state)

    # ---- native checkpoints: the Keras weights file (layers AND the compiled-in
    # ---- optimizer's slots and iteration count), plus the dropout generators' seeds --
    def save_native(self, directory: Path):
        # Outside any keras.distribution: saving builds a throw-away Optimizer
        # (saving_lib.get_attr_skipset) whose variables would otherwise be laid out
        # across the world, a collective that only rank 0, the writer, would enter.
        distribution = keras.distribution.distribution()
        keras.distribution.set_distribution(None)
        try:
            self.net.save_weights(directory / "keras_model.weights.h5")
        finally:
            keras.distribution.set_distribution(distribution)
        seeds = {layer.name: to_numpy(layer.seed_generator.state).tolist()
                 for layer in self.dropouts if hasattr(layer, "seed_generator")}
        (directory / "dropout_seeds.json").write_text(json.dumps(seeds))

    def load_native(self, directory: Path):
        self.net.load_weights(directory / "keras_model.weights.h5")
        seeds = json.loads((directory / "dropout_seeds.json").read_text())
        for layer in self.dropouts:
            if hasattr(layer, "seed_generator") and layer.name in seeds:
                state = layer.seed_generator.state
                state.assign(np.asarray(seeds[layer.name], state.dtype))


MODEL = KerasCharRNN  # what charrnn.common.registry loads


"""Keras 3: `Embedding`, `LSTM` and `Dense` layers, one file for the TensorFlow, JAX and
PyTorch backends (chosen the Keras way, with KERAS_BACKEND; TensorFlow by default).

    python keras_model.py train --num-epochs 1
    KERAS_BACKEND=jax python keras_model.py generate --seed "KING"

The (h, c) state is an explicit input and output of the functional model rather than
`stateful=True` layers: stateful layers fix the batch size in their state variables,
while the same model must also evaluate and generate with any batch (the training loop
samples one text after each epoch). Keras' Adam is subclassed to put epsilon where
PyTorch does (SPEC section 4). `fit` cannot return the carried state, so each backend
computes gradients its own way (GradientTape, jax.grad, autograd); everything else
(layers, loss, optimizer, clipping, saving) is backend-agnostic Keras.
"""

from common.bootstrap import early_setup

early_setup(__file__)  # before the backend loads its thread pools

import json
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from common.cli import main
from common.config import ModelConfig, OptimConfig
from common.framework import CPU, CharRNN, Device, choose_device
from common.threads import limit_xla_threads, set_tf_threads
from common.weights import Weights, in_out_layout

BACKEND = keras.backend.backend()  # "tensorflow", "jax" or "torch"
if BACKEND == "tensorflow":
    import tensorflow as tf
elif BACKEND == "jax":
    import jax
    from jax._src import xla_bridge  # no public "has the backend started" query
elif BACKEND == "torch":
    import torch

# ---------------------------------------------------------------------------------------
# Network. Shapes: B batch_size, T seq_len, H rnn_size, V vocab_size, L num_layers.
# ---------------------------------------------------------------------------------------


def build_net(config: ModelConfig, seed: int) -> keras.Model:
    """[x (B, T) int32, h_0..h_L-1, c_0..c_L-1 each (B, H)] -> [logits (B, T, V), h.., c..]."""
    L, H = config.num_layers, config.rnn_size
    x = keras.Input((None,), dtype="int32", name="x")
    h_in = [keras.Input((H,), name=f"h_{k}") for k in range(L)]
    c_in = [keras.Input((H,), name=f"c_{k}") for k in range(L)]
    out = layers.Embedding(config.vocab_size, config.embedding_size, name="embedding")(x)
    out = layers.Dropout(config.drop_rate, seed=seed, name="dropout_0")(out)
    h_out, c_out = [], []
    for k in range(L):
        lstm = layers.LSTM(H, return_sequences=True, return_state=True, name=f"lstm_{k}")
        out, h, c = lstm(out, initial_state=[h_in[k], c_in[k]])  # out (B, T, H)
        out = layers.Dropout(config.drop_rate, seed=seed + k + 1, name=f"dropout_{k + 1}")(out)
        h_out.append(h)
        c_out.append(c)
    logits = layers.Dense(config.vocab_size, name="dense")(out)
    return keras.Model([x, *h_in, *c_in], [logits, *h_out, *c_out], name="char_rnn")


def native_places(num_layers: int) -> dict[str, tuple[str, int]]:
    """Canonical name -> (layer name, index in its trainable weights) in `build_net`'s model.
    Same gate order i, f, g(c), o; the layouts differ as `native_layout` says."""
    places = {"embedding": ("embedding", 0), "dense.w": ("dense", 0), "dense.b": ("dense", 1)}
    for k in range(num_layers):
        places |= {f"lstm.{k}.{part}": (f"lstm_{k}", i)  # kernel, recurrent kernel, bias
                   for i, part in enumerate(("w_ih", "w_hh", "bias"))}
    return places


def to_numpy(a) -> np.ndarray:
    """A backend tensor or Keras variable as NumPy (ops.convert_to_numpy goes through an
    __array__ that NumPy 2 warns about on the TensorFlow and PyTorch backends)."""
    a = a.value if isinstance(a, keras.Variable) else a
    if hasattr(a, "detach"):  # torch
        a = a.detach().cpu()
    return np.asarray(a.numpy() if hasattr(a, "numpy") else a)


def mean_cross_entropy(logits, y):
    return ops.mean(ops.sparse_categorical_crossentropy(y, logits, from_logits=True))


class TorchAdam(keras.optimizers.Adam):
    """Adam with PyTorch's epsilon placement, p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).

    Keras' own folds the corrections into the step size and adds eps to sqrt(v)
    uncorrected, which differs while 1-b2^t is small."""

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        gradient = ops.cast(gradient, dtype)
        t = ops.cast(self.iterations + 1, dtype)
        step_size = ops.cast(learning_rate, dtype) / (1.0 - ops.power(self.beta_1, t))
        sqrt_c2 = ops.sqrt(1.0 - ops.power(self.beta_2, t))
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign(m, self.beta_1 * m + (1.0 - self.beta_1) * gradient)
        self.assign(v, self.beta_2 * v + (1.0 - self.beta_2) * ops.square(gradient))
        self.assign_sub(variable, step_size * m / (ops.sqrt(v) / sqrt_c2 + self.epsilon))


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class KerasCharRNN(CharRNN):
    framework = "keras"

    def __init__(self, config: ModelConfig, weights: Weights, optim: OptimConfig,
                 device: Device = CPU, seed: int = 0):
        super().__init__(config, weights, optim, device, seed)
        # No ":0" for torch: its variables are moved with .to("cpu:0"), which returns a plain
        # tensor instead of the Parameter, and integer seed variables then fail to build.
        self.keras_device = (device.kind if BACKEND == "torch"
                             else f"{device.kind}:{device.index}")
        with keras.device(self.keras_device):
            self.net = build_net(config, seed)
            self.optimizer = TorchAdam(learning_rate=optim.learning_rate, beta_1=optim.beta1,
                                       beta_2=optim.beta2, epsilon=optim.eps,
                                       global_clipnorm=optim.clip_norm)  # not per-tensor clipnorm
            self._load_canonical(weights)
            self.optimizer.build(self.net.trainable_variables)
        self.net.compile(optimizer=self.optimizer)  # so the weights file holds Adam's state too
        self.dropouts = [layer for layer in self.net.layers if isinstance(layer, layers.Dropout)]
        self.cells = [self.net.get_layer(f"lstm_{k}").cell for k in range(config.num_layers)]
        getattr(self, f"_compile_{BACKEND}")()

    # ---- weights: canonical <-> Keras, through `native_places` and `native_layout` ------
    def _load_canonical(self, w: Weights):
        variables = {}
        for name, (layer, i) in native_places(self.config.num_layers).items():
            variables[name] = self.net.get_layer(layer).trainable_weights[i]
            variables[name].assign(in_out_layout(name, w[name]))
        # Canonical names in `net.trainable_variables` order, the order of the gradients;
        # a KeyError here means the map above missed a variable.
        by_id = {id(v): name for name, v in variables.items()}
        self.names = [by_id[id(v)] for v in self.net.trainable_variables]

    def _canonical(self, arrays) -> Weights:
        """Arrays in `net.trainable_variables` order -> canonical names and layout."""
        return {name: in_out_layout(name, to_numpy(a).astype(np.float32)).copy()
                for name, a in zip(self.names, arrays)}

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
        if BACKEND == "tensorflow":
            set_tf_threads(tf, threads)
            gpu_names = [tf.config.experimental.get_device_details(gpu).get("device_name", "GPU")
                         for gpu in tf.config.list_physical_devices("GPU")]
        elif BACKEND == "jax":
            limit_xla_threads(threads, xla_bridge.backends_are_initialized())  # before devices()
            gpu_names = [d.device_kind for d in jax.devices() if d.platform == "gpu"]
        else:
            if threads:
                torch.set_num_threads(threads)
            gpu_names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return choose_device(device, gpu_names, f"Keras' {BACKEND} backend sees no GPU (a "
                                                f"CPU-only {BACKEND} build, or no GPU driver)")

    def _step_fn(self, ids, *state):
        """ids (B,) int32, h_0..h_L-1, c_0..c_L-1 (B, H) -> logits (B, V), then the new
        state: one character through the model's own layers and LSTMCells, without the
        functional graph and the LSTM layer's time loop. `call`, not `__call__`: on the
        torch backend, where it runs eagerly, the wrapper cost a third of the step."""
        L = self.config.num_layers
        out = self.net.get_layer("embedding").call(ids)  # (B, E)
        new_h, new_c = [], []
        for k, cell in enumerate(self.cells):
            out, (h, c) = cell.call(out, [state[k], state[L + k]])
            new_h.append(h)
            new_c.append(c)
        return self.net.get_layer("dense").call(out), *new_h, *new_c

    # ---- compiled functions, one small branch per backend. x, y (B, T) int32;
    # ---- state = (h_0..h_L-1, c_0..c_L-1), each (B, H) backend tensors. ------------
    def _compile_tensorflow(self):
        net, opt = self.net, self.optimizer

        def grads(x, y, state, training):
            with tf.GradientTape() as tape:
                logits, *state = net([x, *state], training=training)
                loss = mean_cross_entropy(logits, y)
            # The embedding's gradient comes as IndexedSlices; Adam wants it dense.
            g = [tf.convert_to_tensor(g) for g in tape.gradient(loss, net.trainable_variables)]
            return loss, g, state

        def train(x, y, state):
            loss, g, state = grads(x, y, state, True)
            opt.apply(g, net.trainable_variables)  # global-norm clip, then Adam
            return loss, state

        def evaluate(x, y, state):
            logits, *state = net([x, *state])
            return mean_cross_entropy(logits, y), state

        ids = tf.TensorSpec([None, None], tf.int32)
        state = [tf.TensorSpec([None, self.config.rnn_size], tf.float32)] * (
            2 * self.config.num_layers)
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

    def _compile_jax(self):
        # JAX is functional: variables go in as arrays (stateless_call, stateless_apply) and
        # the new values are assigned back to the Keras variables after each step.
        net, opt = self.net, self.optimizer

        def loss_fn(tv, ntv, x, y, state, training):
            (logits, *state), ntv = net.stateless_call(tv, ntv, [x, *state], training=training)
            return mean_cross_entropy(logits, y), (state, ntv)

        value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

        @jax.jit
        def train(tv, ntv, ov, x, y, state):
            (loss, (state, ntv)), g = value_and_grad(tv, ntv, x, y, state, True)
            tv, ov = opt.stateless_apply(ov, g, tv)
            return loss, state, tv, ntv, ov

        @jax.jit
        def grads(tv, ntv, x, y, state):
            (loss, (state, _)), g = value_and_grad(tv, ntv, x, y, state, False)
            return loss, g, state

        @jax.jit
        def evaluate(tv, ntv, x, y, state):
            loss, (state, _) = loss_fn(tv, ntv, x, y, state, False)
            return loss, state

        @jax.jit
        def step(tv, ids, *state):
            with keras.StatelessScope(state_mapping=list(zip(net.trainable_variables, tv))):
                return self._step_fn(ids, *state)

        @jax.jit
        def forward(tv, ntv, x, state):
            return net.stateless_call(tv, ntv, [x, *state])[0]

        def values(variables):
            return [v.value for v in variables]

        def run_train(x, y, state):
            loss, state, tv, ntv, ov = train(values(net.trainable_variables),
                                             values(net.non_trainable_variables),
                                             values(opt.variables), x, y, state)
            for group, new in ((net.trainable_variables, tv), (net.non_trainable_variables, ntv),
                               (opt.variables, ov)):
                for variable, value in zip(group, new):
                    variable.assign(value)
            return loss, state

        def with_values(fn):
            def call(*args):
                return fn(values(net.trainable_variables), values(net.non_trainable_variables),
                          *args)
            return call

        self._train = run_train
        self._grads = with_values(grads)
        self._eval = with_values(evaluate)
        self._forward = with_values(forward)
        self._step = lambda ids, *state: step(values(net.trainable_variables), ids, *state)

    def _compile_torch(self):
        # Eager PyTorch, the way Keras' torch backend runs: autograd, then the optimizer
        # under no_grad. Keras' torch LSTM runs a Python loop over time steps on the CPU.
        net, opt = self.net, self.optimizer

        def grads(x, y, state, training):
            net.zero_grad()
            logits, *state = net([x, *state], training=training)
            loss = mean_cross_entropy(logits, y)
            loss.backward()
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
        h, c = state[:L], state[L:]
        return np.stack([to_numpy(s) for s in h]), np.stack([to_numpy(s) for s in c])

    def state_from_numpy(self, h, c):
        with keras.device(self.keras_device):
            return tuple(ops.convert_to_tensor(np.asarray(s, np.float32)) for s in [*h, *c])

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

    def loss_and_grads(self, x, y, state):
        loss, g, state = self._grads(self._ids(x), self._ids(y), list(state))
        return float(loss), self._canonical(g), tuple(state)

    def train_step(self, x, y, state):
        loss, state = self._train(self._ids(x), self._ids(y), list(state))
        return float(loss), tuple(state)  # float() waits for the device

    def eval_step(self, x, y, state):
        loss, state = self._eval(self._ids(x), self._ids(y), list(state))
        return float(loss), tuple(state)

    # ---- native checkpoints: the Keras weights file (layers AND the compiled-in
    # ---- optimizer's m, v and iteration count), plus the dropout generators' seeds --
    def save_native(self, directory: Path):
        self.net.save_weights(directory / "keras_model.weights.h5")
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


MODEL = KerasCharRNN  # what common.registry loads

if __name__ == "__main__":
    main(MODEL)

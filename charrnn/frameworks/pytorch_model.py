"""PyTorch: `nn.LSTM`, `nn.GRU` or `nn.RNN` (the fused kernels, cuDNN on a GPU),
torch.optim's Adam, RMSprop or SGD, global-norm clipping.

    python pytorch_model.py train --num-epochs 1
    python pytorch_model.py generate --seed "KING"

nn.LSTM and nn.RNN keep two bias vectors; the second (bias_hh) is held at zero and
not trained, so the model is the canonical one (SPEC sections 1 and 8). nn.GRU's two
biases are both canonical (b_hn sits inside r * (W_hn h + b_hn)) and both trained.
torch.optim's three optimisers are SPEC section 9's formulas exactly: Adam and RMSprop
add eps outside the sqrt (RMSprop uncentred, without momentum), SGD's momentum buffer
is b = momentum b + g with dampening 0.

`--precision bf16-mixed` (SPEC section 12) is torch.autocast(bfloat16) around the forward
of training and evaluation, the loss taken in float32 from float32 logits; weights,
gradients, clipping and the optimiser stay float32. Where autocast departs from the
section (nn.LSTM and nn.RNN run oneDNN's bf16 kernel, whose h and c come out in bf16;
the dense layer's logits are rounded to bf16), docs/FRAMEWORKS.md gives the measured cost.
"""


import datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from charrnn.common.config import BF16_MIXED, FP32, ModelConfig, OptimConfig
from charrnn.common.distributed import World
from charrnn.common.framework import CPU, CharRNN, Device, choose_device
from charrnn.common.gpus import torch_gpu_names
from charrnn.common.weights import Weights

# ---------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------


RECURRENT = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}  # nn.RNN: tanh by default


class Net(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.cell = config.cell
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.drop = nn.Dropout(config.drop_rate)
        # Registered under the cell's name ("lstm", "gru", "rnn"), so the parameter names
        # read like the canonical ones and LSTM checkpoints keep theirs. The layer's own
        # dropout acts between layers; self.drop adds it after the last.
        self.add_module(config.cell, RECURRENT[config.cell](
            config.embedding_size, config.rnn_size, config.num_layers, batch_first=True,
            dropout=config.drop_rate))
        self.dense = nn.Linear(config.rnn_size, config.vocab_size)

    def forward(self, x, state):
        """x (B, T) int64, state (h, c) each (L, B, H) -> logits (B, T, V), new state.

        nn.GRU and nn.RNN carry h alone: c passes through, the zeros it came in as."""
        x = self.drop(self.embedding(x))
        if self.cell == "lstm":
            out, state = self.lstm(x, state)
        else:
            h, c = state
            out, h = getattr(self, self.cell)(x, h)
            state = (h, c)
        return self.dense(self.drop(out)), state


def native_names(config: ModelConfig) -> dict[str, str]:
    """Canonical name -> the `Net` parameter holding it: same layout, same gate order
    (i, f, g, o; GRU r, z, n). The canonical LSTM and RNN bias is bias_ih (its twin
    bias_hh is `zero_biases`); GRU's b_ih and b_hh are bias_ih and bias_hh."""
    names = {"embedding": "embedding.weight", "dense.w": "dense.weight",
             "dense.b": "dense.bias"}
    biases = {"b_ih": "bias_ih", "b_hh": "bias_hh"} if config.cell == "gru" else {
        "bias": "bias_ih"}
    for k in range(config.num_layers):
        layer = config.layer(k)
        names |= {f"{layer}.w_ih": f"{config.cell}.weight_ih_l{k}",
                  f"{layer}.w_hh": f"{config.cell}.weight_hh_l{k}"}
        names |= {f"{layer}.{bias}": f"{config.cell}.{native}_l{k}"
                  for bias, native in biases.items()}
    return names


def zero_biases(config: ModelConfig) -> dict[str, str]:
    """Canonical bias name -> nn.LSTM's or nn.RNN's second bias of that layer, held at
    zero and not trained; exported, the canonical bias is the sum of the two. nn.GRU
    has none: both its biases are canonical."""
    if config.cell == "gru":
        return {}
    return {f"{config.layer(k)}.bias": f"{config.cell}.bias_hh_l{k}"
            for k in range(config.num_layers)}


def make_optimizer(params, optim: OptimConfig) -> torch.optim.Optimizer:
    """torch.optim's own optimiser for `optim.optimizer`: each is SPEC section 9's formula
    as it stands (RMSprop: eps outside the sqrt, centered=False, momentum=0; SGD:
    dampening=0, nesterov=False), so none is written by hand."""
    if optim.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=optim.learning_rate, alpha=optim.decay_rate,
                                   eps=optim.eps)
    if optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=optim.learning_rate, momentum=optim.momentum)
    return torch.optim.Adam(params, lr=optim.learning_rate, betas=(optim.beta1, optim.beta2),
                            eps=optim.eps)


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class TorchCharRNN(CharRNN):
    framework = "pytorch"
    precisions = (FP32, BF16_MIXED)

    def __init__(self, config: ModelConfig, weights: Weights, optim: OptimConfig,
                 device: Device = CPU, seed: int = 0):
        super().__init__(config, weights, optim, device, seed)
        torch.manual_seed(seed)  # dropout masks
        self.torch_device = torch.device(f"cuda:{device.index}" if device.is_gpu else "cpu")
        self.net = Net(config).to(self.torch_device)
        self.names = native_names(config)
        self.zero_biases = zero_biases(config)
        self._load_canonical(weights)
        named = dict(self.net.named_parameters())
        for native in self.zero_biases.values():
            named[native].requires_grad_(False)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        # What --l1 and --l2 penalise: the recurrent and dense kernels.
        self.kernels = [named[self.names[name]] for name in config.kernel_names()]
        # (w_ih, w_hh, bias) of each layer for `step` (GRU: w_ih, w_hh, b_ih, b_hh): the
        # parameters themselves, which the optimiser and load_state_dict update in place
        # (a zero twin bias_hh is left out).
        self.cells = [tuple(named[self.names[f"{config.layer(k)}.{name}"]]
                            for name in ("w_ih", "w_hh", *config.bias_names()))
                      for k in range(config.num_layers)]
        self._layer_step = {"lstm": self._lstm_step, "gru": self._gru_step,
                            "rnn": self._rnn_step}[config.cell]
        self.optimizer = make_optimizer(self.params, optim)
        self.bf16 = optim.precision == BF16_MIXED
        # Data parallel: DDP averages the gradients across the ranks during backward
        # (bucketed all-reduces, gloo or NCCL), before `train_step` clips them.
        self.train_net = self.net
        if self.world.size > 1:
            self.train_net = DistributedDataParallel(
                self.net, device_ids=[device.index] if device.is_gpu else None)

    @classmethod
    def versions(cls):
        return {"torch": torch.__version__}

    @classmethod
    def setup_device(cls, device, threads):
        if threads:
            torch.set_num_threads(threads)
        return choose_device(device, torch_gpu_names(),
                             f"PyTorch {torch.__version__} sees no CUDA GPU (a CPU-only build "
                             "of torch, or no NVIDIA driver)", cls.world.local_rank)

    # ---- data parallel: torch.distributed (docs/SPEC.md section 11) -------------------
    _host_group = None  # gloo group for the loop's host arrays when the gradients use NCCL

    @classmethod
    def init_world(cls, world: World, device: str, timeout_s: float) -> None:
        """gloo on the CPU, NCCL on GPUs (then a gloo group for the loop's host arrays).
        torchrun's variables are read as torchrun means them (env://, its agent's
        store); a world set by JAX's or TF's variables rendezvouses at its coordinator
        (tcp://)."""
        timeout = datetime.timedelta(seconds=timeout_s)
        gpu = device == "gpu" or (device == "auto" and torch.cuda.is_available())
        if gpu:
            torch.cuda.set_device(world.local_rank)
        init = "env://" if world.source == "WORLD_SIZE" else f"tcp://{world.coordinator}"
        dist.init_process_group("nccl" if gpu else "gloo", init_method=init, rank=world.rank,
                                world_size=world.size, timeout=timeout)
        if gpu:
            cls._host_group = dist.new_group(backend="gloo", timeout=timeout)
        cls.world = world

    @classmethod
    def all_sum(cls, values):
        total = torch.from_numpy(np.array(values, np.float64))
        dist.all_reduce(total, group=cls._host_group)
        return total.numpy()

    # ---- weights: canonical <-> nn.LSTM/GRU/RNN, through `native_names`, `zero_biases` --
    def _load_canonical(self, w: Weights):
        tensors = {native: w[name] for name, native in self.names.items()}
        tensors |= {native: np.zeros_like(w[name]) for name, native in self.zero_biases.items()}
        state = {name: torch.from_numpy(np.array(a, np.float32)) for name, a in tensors.items()}
        self.net.load_state_dict(state)
        getattr(self.net, self.config.cell).flatten_parameters()

    def get_weights(self):
        sd = {name: t.detach().cpu().numpy() for name, t in self.net.state_dict().items()}
        w = {name: sd[native].copy() for name, native in self.names.items()}
        for name, native in self.zero_biases.items():
            w[name] += sd[native]
        return w

    # ---- state -----------------------------------------------------------------------
    def zero_state(self, batch_size):
        shape = (self.config.num_layers, batch_size, self.config.rnn_size)
        return (torch.zeros(shape, device=self.torch_device),
                torch.zeros(shape, device=self.torch_device))

    def state_to_numpy(self, state):
        return tuple(s.detach().cpu().numpy().copy() for s in state)

    def state_from_numpy(self, h, c):
        h = torch.tensor(np.asarray(h, np.float32), device=self.torch_device)
        if self.config.cell != "lstm":  # no cell state: c is zeros whatever came in
            return h, torch.zeros_like(h)
        return h, torch.tensor(np.asarray(c, np.float32), device=self.torch_device)

    def _ids(self, a):
        return torch.from_numpy(np.asarray(a, np.int64)).to(self.torch_device)

    # ---- compute ---------------------------------------------------------------------
    def _run(self, net, x, state):
        """`net` on ids x under the run's precision: logits (B, T, V) and the state, both
        float32. Under bf16-mixed, autocast gives the products bf16 operands; the logits
        and nn.LSTM's (nn.RNN's) h and c come back in bf16 and are widened here, so the
        loss, the carried state and everything after them are float32 (SPEC section 12)."""
        if not self.bf16:
            return net(self._ids(x), state)
        with torch.autocast(self.torch_device.type, dtype=torch.bfloat16):
            logits, state = net(self._ids(x), state)
        return logits.float(), tuple(s.float() for s in state)

    @torch.inference_mode()
    def forward(self, x, state):
        self.net.eval()
        logits, state = self._run(self.net, x, state)
        return logits.cpu().numpy(), state

    @torch.inference_mode()
    def step(self, ids, state):
        """One character by hand on nn.LSTM's (GRU's, RNN's) own parameters, on one CPU
        thread.

        The same maths as the fused layer: per layer two matrix products and the gate
        nonlinearities. Measured for the LSTM per character (CPU time, 1 thread, this
        2-core machine): nn.LSTM called for one step 329 us, this 114 us;
        torch.jit.trace of it was within 5%, torch.compile slower per step (plus 3 s to
        compile). At batch 1 every op is tiny and a second OpenMP thread only adds
        fork/join: on the busy machine, 2 threads made each step 10x slower or worse.
        """
        if self.device.is_gpu:
            return self._cell_steps(ids, state)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._cell_steps(ids, state)
        finally:
            torch.set_num_threads(threads)

    def _cell_steps(self, ids, state):
        """ids (B,) -> logits (B, V); state (h, c) each (L, B, H)."""
        h0, c0 = state
        h = torch.empty_like(h0)
        # GRU and RNN have no cell state: their c passes through, all zeros.
        c = torch.empty_like(c0) if self.config.cell == "lstm" else c0
        x = self.net.embedding.weight[self._ids(ids)]  # (B, E)
        for k, weights in enumerate(self.cells):
            x = self._layer_step(x, h0[k], c0[k], h[k], c[k], *weights)
        return F.linear(x, self.net.dense.weight, self.net.dense.bias).cpu().numpy(), (h, c)

    def _lstm_step(self, x, h0, c0, h, c, w_ih, w_hh, bias):
        """One LSTM layer: writes the new h and c, returns h."""
        z = F.linear(x, w_ih, bias).addmm_(h0, w_hh.t())  # (B, 4H): i, f, g, o
        i, f, _, o = torch.sigmoid(z).chunk(4, 1)
        g = torch.tanh(z[:, 2 * self.config.rnn_size:3 * self.config.rnn_size])
        torch.addcmul(f * c0, i, g, out=c)
        return torch.mul(o, torch.tanh(c), out=h)

    def _gru_step(self, x, h0, c0, h, c, w_ih, w_hh, b_ih, b_hh):
        """One GRU layer (SPEC section 8): the two projections apart, as r multiplies
        the recurrent one; h' = (1 - z) * n + z * h is lerp(n, h, z)."""
        H = self.config.rnn_size
        xp, hp = F.linear(x, w_ih, b_ih), F.linear(h0, w_hh, b_hh)  # (B, 3H): r, z, n
        r, z = xp[:, :2 * H].add_(hp[:, :2 * H]).sigmoid_().chunk(2, 1)
        n = xp[:, 2 * H:].addcmul_(r, hp[:, 2 * H:]).tanh_()
        return torch.lerp(n, h0, z, out=h)

    def _rnn_step(self, x, h0, c0, h, c, w_ih, w_hh, bias):
        """One vanilla RNN layer: h' = tanh(W_ih x + bias + W_hh h)."""
        return torch.tanh(F.linear(x, w_ih, bias).addmm_(h0, w_hh.t()), out=h)

    def _loss(self, x, y, state):
        """The cross-entropy (what is reported), the objective (what is differentiated:
        the cross-entropy plus the --l1/--l2 penalties, built only when one is on) and
        the new state."""
        logits, state = self._run(self.train_net, x, state)
        loss = F.cross_entropy(logits.reshape(-1, self.config.vocab_size),
                               self._ids(y).reshape(-1))
        objective = loss + self._penalty() if self.optim.penalised else loss
        return loss, objective, tuple(s.detach() for s in state)  # truncated BPTT

    def _penalty(self):
        """l1 * sum |W| + l2 * sum W^2 over the kernels (SPEC section 9). abs' gradient
        at 0 is sign(0) = 0, as the section asks."""
        o = self.optim
        penalty = 0.0
        for w in self.kernels:
            if o.l1:
                penalty = penalty + o.l1 * w.abs().sum()
            if o.l2:
                penalty = penalty + o.l2 * w.square().sum()
        return penalty

    def loss_and_grads(self, x, y, state):
        self.net.eval()
        self.optimizer.zero_grad(set_to_none=True)
        loss, objective, state = self._loss(x, y, state)
        objective.backward()
        named = dict(self.net.named_parameters())
        # An LSTM or RNN bias's gradient is bias_ih's: the zero twin is not trained.
        grads = {name: named[native].grad.detach().cpu().numpy().copy()
                 for name, native in self.names.items()}
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item(), grads, state

    def set_learning_rate(self, learning_rate):
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate

    def train_step(self, x, y, state):
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, objective, state = self._loss(x, y, state)
        objective.backward()
        nn.utils.clip_grad_norm_(self.params, self.optim.clip_norm)
        self.optimizer.step()
        return loss.item(), state  # .item() synchronises the device

    # ---- native checkpoints ------------------------------------------------------------
    def save_native(self, directory: Path):
        torch.save({"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "rng": torch.get_rng_state()}, directory / "pytorch_model.pt")

    def load_native(self, directory: Path):
        saved = torch.load(directory / "pytorch_model.pt", map_location=self.torch_device,
                           weights_only=True)
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"].cpu())


MODEL = TorchCharRNN  # what charrnn.common.registry loads


"""PyTorch: `nn.LSTM` (the fused kernel, cuDNN on a GPU), Adam, global-norm clipping.

    python pytorch_model.py train --num-epochs 1
    python pytorch_model.py generate --seed "KING"

nn.LSTM keeps two bias vectors; the second (bias_hh) is held at zero and not
trained, so the model is the canonical one (SPEC section 1).
"""

from common.bootstrap import early_setup

early_setup(__file__)  # before torch loads its OpenMP pool

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.cli import main
from common.config import ModelConfig, OptimConfig
from common.framework import CPU, CharRNN, Device, choose_device
from common.weights import Weights

# ---------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.drop = nn.Dropout(config.drop_rate)
        # nn.LSTM's own dropout acts between layers; self.drop adds it after the last.
        self.lstm = nn.LSTM(config.embedding_size, config.rnn_size, config.num_layers,
                            batch_first=True, dropout=config.drop_rate)
        self.dense = nn.Linear(config.rnn_size, config.vocab_size)

    def forward(self, x, state):
        """x (B, T) int64, state (h, c) each (L, B, H) -> logits (B, T, V), new state."""
        out, state = self.lstm(self.drop(self.embedding(x)), state)
        return self.dense(self.drop(out)), state


def native_names(num_layers: int) -> dict[str, str]:
    """Canonical name -> the `Net` parameter holding it: same layout, same gate order
    i, f, g, o. The canonical bias is bias_ih; its twin bias_hh is `zero_biases`."""
    names = {"embedding": "embedding.weight", "dense.w": "dense.weight",
             "dense.b": "dense.bias"}
    for k in range(num_layers):
        names |= {f"lstm.{k}.w_ih": f"lstm.weight_ih_l{k}",
                  f"lstm.{k}.w_hh": f"lstm.weight_hh_l{k}", f"lstm.{k}.bias": f"lstm.bias_ih_l{k}"}
    return names


def zero_biases(num_layers: int) -> dict[str, str]:
    """Canonical bias name -> nn.LSTM's second bias of that layer, held at zero and not
    trained; exported, the canonical bias is the sum of the two."""
    return {f"lstm.{k}.bias": f"lstm.bias_hh_l{k}" for k in range(num_layers)}


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class TorchCharRNN(CharRNN):
    framework = "pytorch"

    def __init__(self, config: ModelConfig, weights: Weights, optim: OptimConfig,
                 device: Device = CPU, seed: int = 0):
        super().__init__(config, weights, optim, device, seed)
        torch.manual_seed(seed)  # dropout masks
        self.torch_device = torch.device(f"cuda:{device.index}" if device.is_gpu else "cpu")
        self.net = Net(config).to(self.torch_device)
        self.names = native_names(config.num_layers)
        self.zero_biases = zero_biases(config.num_layers)
        self._load_canonical(weights)
        named = dict(self.net.named_parameters())
        for native in self.zero_biases.values():
            named[native].requires_grad_(False)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        # (w_ih, w_hh, bias) of each layer for `step`: the parameters themselves, which
        # Adam and load_state_dict update in place (bias_hh is held at zero).
        self.cells = [tuple(named[f"lstm.{kind}_l{k}"] for kind in ("weight_ih", "weight_hh",
                                                                   "bias_ih"))
                      for k in range(config.num_layers)]
        self.optimizer = torch.optim.Adam(self.params, lr=optim.learning_rate,
                                          betas=(optim.beta1, optim.beta2), eps=optim.eps)

    @classmethod
    def versions(cls):
        return {"torch": torch.__version__}

    @classmethod
    def setup_device(cls, device, threads):
        if threads:
            torch.set_num_threads(threads)
        gpu_names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return choose_device(device, gpu_names, f"PyTorch {torch.__version__} sees no CUDA GPU "
                                                "(a CPU-only build of torch, or no NVIDIA driver)")

    # ---- weights: canonical <-> nn.LSTM, through `native_names` and `zero_biases` ------
    def _load_canonical(self, w: Weights):
        tensors = {native: w[name] for name, native in self.names.items()}
        tensors |= {native: np.zeros_like(w[name]) for name, native in self.zero_biases.items()}
        state = {name: torch.from_numpy(np.array(a, np.float32)) for name, a in tensors.items()}
        self.net.load_state_dict(state)
        self.net.lstm.flatten_parameters()

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
        return (torch.tensor(np.asarray(h, np.float32), device=self.torch_device),
                torch.tensor(np.asarray(c, np.float32), device=self.torch_device))

    def _ids(self, a):
        return torch.from_numpy(np.asarray(a, np.int64)).to(self.torch_device)

    # ---- compute ---------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, x, state):
        self.net.eval()
        logits, state = self.net(self._ids(x), state)
        return logits.cpu().numpy(), state

    @torch.inference_mode()
    def step(self, ids, state):
        """One character by hand on nn.LSTM's own parameters, on one CPU thread.

        The same maths as nn.LSTM: per layer two addmm and the gate nonlinearities.
        Measured per character (CPU time, 1 thread, this 2-core machine): nn.LSTM
        called for one step 329 us, this 114 us; torch.jit.trace of it was within 5%,
        torch.compile slower per step (plus 3 s to compile). At batch 1 every op is
        tiny and a second OpenMP thread only adds fork/join: on the busy machine,
        2 threads made each step 10x slower or worse.
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
        h, c = torch.empty_like(h0), torch.empty_like(c0)
        x = self.net.embedding.weight[self._ids(ids)]  # (B, E)
        for k, (w_ih, w_hh, bias) in enumerate(self.cells):
            z = F.linear(x, w_ih, bias).addmm_(h0[k], w_hh.t())  # (B, 4H): i, f, g, o
            i, f, _, o = torch.sigmoid(z).chunk(4, 1)
            g = torch.tanh(z[:, 2 * self.config.rnn_size:3 * self.config.rnn_size])
            torch.addcmul(f * c0[k], i, g, out=c[k])
            x = torch.mul(o, torch.tanh(c[k]), out=h[k])
        return F.linear(x, self.net.dense.weight, self.net.dense.bias).cpu().numpy(), (h, c)

    def _loss(self, x, y, state):
        logits, state = self.net(self._ids(x), state)
        loss = F.cross_entropy(logits.reshape(-1, self.config.vocab_size),
                               self._ids(y).reshape(-1))
        return loss, tuple(s.detach() for s in state)  # cut the graph: truncated BPTT

    def loss_and_grads(self, x, y, state):
        self.net.eval()
        self.optimizer.zero_grad(set_to_none=True)
        loss, state = self._loss(x, y, state)
        loss.backward()
        named = dict(self.net.named_parameters())
        # The canonical bias's gradient is bias_ih's: the zero twin is not trained.
        grads = {name: named[native].grad.detach().cpu().numpy().copy()
                 for name, native in self.names.items()}
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item(), grads, state

    def train_step(self, x, y, state):
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, state = self._loss(x, y, state)
        loss.backward()
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


MODEL = TorchCharRNN  # what common.registry loads

if __name__ == "__main__":
    main(MODEL)

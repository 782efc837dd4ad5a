"""Everything written once for every framework: text, batching, sampling, the CLI,
logging, checkpoints, the training loop, the portable weight format, the spec's
optimiser update rules for frameworks whose own cannot follow it (optim), data-parallel
launching (launch, distributed) and each backend's GPU discovery (gpus).

Imports only the standard library, NumPy and safetensors, so it works in both
the modern and the legacy environment.
"""

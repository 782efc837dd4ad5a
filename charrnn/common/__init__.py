"""Everything written once for every framework: text, batching, sampling, the CLI,
logging, checkpoints, the training loop and the portable weight format.

Imports only the standard library, NumPy and safetensors, so it works in both
the modern and the legacy environment.
"""

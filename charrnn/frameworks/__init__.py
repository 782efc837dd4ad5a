"""One file per framework, each the same model (docs/SPEC.md) and nothing else: building
from the portable weights, the train, eval and one-step functions, device and threads,
native save and load. `charrnn.common.registry` finds them by name and imports them
lazily; a framework's libraries come with its extra (`pip install char-rnn-bench[torch]`).
"""

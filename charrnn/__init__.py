"""char-rnn-bench: one character-level language model in every major Python deep-learning
framework, with one command line, an honest benchmark and a Python API.

    from charrnn import TextGenerator
    gen = TextGenerator()                      # the shipped model, on NumPy
    print(gen.generate(prefix="KING", length=200, seed=7)[0])

The command line is `charrnn` (or `python -m charrnn`); the shared core is
`charrnn.common`, each framework's model `charrnn.frameworks.<name>_model`. Importing
`charrnn` loads nothing heavy: the API's names load on first use, so an entry point can
still set thread counts before NumPy starts.
"""

from __future__ import annotations

__version__ = "0.2.0"

_API = ("TextGenerator", "CharRnnError", "model_class")


def __getattr__(name: str):
    if name in _API:
        from charrnn import api
        return getattr(api, name)
    raise AttributeError(f"module 'charrnn' has no attribute {name!r}")


__all__ = [*_API, "__version__"]

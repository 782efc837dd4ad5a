"""JAX with Flax NNX and Optax: the original suite's command line for this framework;
the model is in charrnn/frameworks/jax_model.py.

    python jax_model.py train --num-epochs 1
    python jax_model.py generate --seed "KING"
"""

from charrnn.common.bootstrap import run_script

if __name__ == "__main__":
    run_script("jax_model")  # the environment and --threads first, then the framework

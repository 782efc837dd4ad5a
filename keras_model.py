"""Keras 3 on the backend KERAS_BACKEND names (tensorflow, jax or torch): the original
suite's command line for this framework; the model is in charrnn/frameworks/keras_model.py.

    python keras_model.py train --num-epochs 1
    python keras_model.py generate --seed "KING"
"""

from charrnn.common.bootstrap import run_script

if __name__ == "__main__":
    run_script("keras_model")  # the environment and --threads first, then the framework

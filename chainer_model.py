"""Chainer (legacy environment): the original suite's command line for this framework;
the model is in charrnn/frameworks/chainer_model.py.

    python chainer_model.py train --num-epochs 1
    python chainer_model.py generate --seed "KING"
"""

from charrnn.common.bootstrap import run_script

if __name__ == "__main__":
    run_script("chainer_model")  # the environment and --threads first, then the framework

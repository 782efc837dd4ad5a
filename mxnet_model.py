"""MXNet Gluon (legacy environment): the original suite's command line for this
framework; the model is in charrnn/frameworks/mxnet_model.py.

    python mxnet_model.py train --num-epochs 1
    python mxnet_model.py generate --seed "KING"
"""

from charrnn.common.bootstrap import run_script

if __name__ == "__main__":
    run_script("mxnet_model")  # the environment and --threads first, then the framework

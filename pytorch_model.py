"""PyTorch: the original suite's command line for this framework; the model is in
charrnn/frameworks/pytorch_model.py.

    python pytorch_model.py train --num-epochs 1
    python pytorch_model.py generate --seed "KING"
"""

from charrnn.common.bootstrap import run_script

if __name__ == "__main__":
    run_script("pytorch_model")  # the environment and --threads first, then the framework

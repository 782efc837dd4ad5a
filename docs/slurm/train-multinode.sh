#!/bin/bash
# Data-parallel training on several machines under Slurm (docs/CLUSTER.md,
# docs/SPEC.md section 11): every Slurm task is one rank running the same training
# command, told its place by torchrun's variables (WORLD_SIZE, RANK, LOCAL_RANK,
# MASTER_ADDR, MASTER_PORT), which this suite reads for any framework; TensorFlow gets a
# TF_CONFIG naming every rank's host and port instead.
#
#   cd char-rnn-bench && make setup          # on a filesystem every node sees
#   sbatch docs/slurm/train-multinode.sh                              # PyTorch, 2 x 2 ranks
#   SCRIPT=jax_model.py sbatch --nodes=4 docs/slurm/train-multinode.sh
#   ARGS="--num-epochs 8 --rnn-size 256" sbatch docs/slurm/train-multinode.sh
#
# The global batch stays --batch-size rows (64 by default): W = nodes x tasks per node
# must divide it. The checkpoint directory must be on the shared filesystem: only rank 0
# writes it, and on a restart every rank reads it (--restore, added below once it
# exists), so a requeued or resubmitted job goes on from the last save with any world
# size that divides the batch. At the time limit or on preemption Slurm sends SIGTERM:
# every rank stops at the same step and rank 0 saves first.
#
#SBATCH --job-name=char-rnn-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2      # ranks per machine
#SBATCH --cpus-per-task=2        # threads per rank (--threads)
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail

SCRIPT=${SCRIPT:-pytorch_model.py}
PYTHON=${PYTHON:-$PWD/.venv/bin/python}
CKPT=${CKPT:-$PWD/checkpoints/${SCRIPT%.py}-multinode}
PORT=${PORT:-29500}
eval "EXTRA=(${ARGS:-})"  # shell words: quotes group, as on a command line

HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)  # where rank 0 runs
RESTORE=()
if [ -e "$CKPT" ] || [ -e "$CKPT.old" ]; then
    RESTORE=(--restore)
fi
# TensorFlow's MultiWorkerMirroredStrategy wants every worker's address: rank r is task r,
# placed in blocks (the first node's tasks first), each on a port of its own.
WORKERS=""
for host in $(scontrol show hostnames "$SLURM_JOB_NODELIST"); do
    for ((i = 0; i < SLURM_NTASKS_PER_NODE; i++)); do
        WORKERS+="\"$host:$((PORT + 1 + i))\","
    done
done
export HEAD PORT SCRIPT WORKERS="[${WORKERS%,}]"

# Single quotes: each task expands its own SLURM_PROCID and SLURM_LOCALID.
srun --kill-on-bad-exit=1 --distribution=block bash -c '
    export WORLD_SIZE=$SLURM_NTASKS RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID \
        MASTER_ADDR=$HEAD MASTER_PORT=$PORT
    if [ "$SCRIPT" = tf_model.py ]; then
        export TF_CONFIG="{\"cluster\": {\"worker\": $WORKERS}, \"task\": {\"type\": \"worker\", \"index\": $SLURM_PROCID}}"
    fi
    exec "$@"' bash "$PYTHON" "$SCRIPT" train --threads "$SLURM_CPUS_PER_TASK" \
    --checkpoint-path "$CKPT" ${RESTORE[@]+"${RESTORE[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}

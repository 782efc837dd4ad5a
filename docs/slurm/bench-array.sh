#!/bin/bash
# One benchmark run spread over a Slurm job array, then merged into one report
# (docs/CLUSTER.md). Task K of an array of N runs shard K/N of the runs
# (python -m benchmarks.run_all --shard K/N) into its own directory; the same script,
# submitted once more after the array with MERGE=1, merges the shards' records.
#
#   cd char-rnn-bench && make setup          # on a filesystem every node sees
#   jobid=$(sbatch --parsable --array=1-4 docs/slurm/bench-array.sh)
#   sbatch --dependency=afterany:$jobid --export=ALL,MERGE=1 docs/slurm/bench-array.sh
#
#   PROFILE=sweep RESULTS=benchmarks/results/sweep-cluster sbatch ...   # another profile
#   ARGS="--frameworks numpy,pytorch --repeats 3" sbatch ...            # more run_all flags
#
# Every task must get the same flags (the merge refuses records of other settings) and the
# same corpus: set CHARRNN_DATA_DIR to a shared copy of tinyshakespeare, as compute nodes
# often cannot download it. Each task runs with --resume, so a requeued (preempted) task
# goes on where it stopped. Give every task the same kind of machine (a partition of
# identical nodes): the merged report keeps each record's machine and never ranks or
# divides times across machine kinds, but one kind makes one table.
#
#SBATCH --job-name=char-rnn-bench
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --time=02:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%x-%A_%a.out

set -euo pipefail

PROFILE=${PROFILE:-quick}
RESULTS=${RESULTS:-benchmarks/results/$PROFILE-cluster}
PYTHON=${PYTHON:-.venv/bin/python}
eval "EXTRA=(${ARGS:-})"  # shell words: quotes group, as on a command line

if [ "${MERGE:-0}" = 1 ]; then
    # Shards that had no runs (an array longer than the run) wrote nothing: skip them.
    shards=()
    for dir in "$RESULTS"/shard-*-of-*; do
        [ -f "$dir/records.jsonl" ] && shards+=("$dir")
    done
    if [ "${#shards[@]}" = 0 ]; then
        echo "error: $RESULTS: no shard has records" >&2
        exit 1
    fi
    exec "$PYTHON" -m benchmarks.report "${shards[@]}" --out "$RESULTS/merged"
fi

# K from 1, whatever the first task id (--array=0-3 works too); N the array's length.
K=$((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN + 1))
N=$SLURM_ARRAY_TASK_COUNT
# --threads defaults to the cores Slurm gave this task (--cpus-per-task); no report per
# shard, the merge writes one of everything.
exec "$PYTHON" -m benchmarks.run_all --profile "$PROFILE" --shard "$K/$N" \
    --out "$RESULTS/shard-$K-of-$N" --resume --no-report ${EXTRA[@]+"${EXTRA[@]}"}

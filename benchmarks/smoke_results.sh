#!/usr/bin/env bash
# Smoke run of the results pipeline at a tiny budget: start, interrupt (SIGTERM, as Ctrl-C) after the first run's
# first checkpoint, resume, run again (everything skipped), gather and plot. Checks the machinery, not
# learning. Usage: bash benchmarks/smoke_results.sh [LOG_FOLDER]   (default results/smoke)
set -euo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-results/smoke}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
ARGS=(--algos sdac sac --envs Pendulum-v1 --seeds 0 1 --steps 2000 --eval-freq 500 --eval-episodes 5
      --jobs 1 --nice 19 --log-folder "$LOG")
FIRST="$LOG/Pendulum-v1/sdac/seed_0/sdac/Pendulum-v1_1/rl_model_replay_buffer_1000_steps.pkl"

echo "== 1. start, interrupted after $FIRST"
python benchmarks/run_results.py "${ARGS[@]}" &
PIPELINE=$!
while [ ! -f "$FIRST" ] && kill -0 "$PIPELINE" 2>/dev/null; do sleep 2; done
sleep 2
kill -TERM "$PIPELINE" 2>/dev/null || true
wait "$PIPELINE" || true
python -c "import json,sys; print('status after the interrupt:', json.load(open(sys.argv[1]))['status'])" \
    "$LOG/Pendulum-v1/sdac/seed_0/run.json"

echo "== 2. the same command: resumes the interrupted run, runs the others"
time python benchmarks/run_results.py "${ARGS[@]}"

echo "== 3. the same command again: every run is complete and skipped"
python benchmarks/run_results.py "${ARGS[@]}"

echo "== 4. figures and tables"
python benchmarks/plot_results.py --log-folder "$LOG" --zoo-plots
cat "$LOG/runs.csv"

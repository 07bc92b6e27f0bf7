#!/usr/bin/env bash
# The suite on a busy machine: the whole test suite RUNS times in a row (default 3) while
# BURNERS processes (default 2) spin on the CPU beside it, then one line per run and a verdict.
# No test may depend on an idle machine; this is how that is shown, not assumed.
#
#   scripts/stress_suite.sh [pytest args...]        e.g. scripts/stress_suite.sh -m "not e2e"
#   RUNS=1 BURNERS=4 scripts/stress_suite.sh
#
# Exit 0 when every run was green. The burners are this script's own children and are killed
# on any exit (trap), Ctrl-C included. Each run's full output stays in the printed log dir.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-3}
BURNERS=${BURNERS:-2}
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/stress-suite.XXXXXX")

burners=()
stop_burners() {
    for pid in "${burners[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${burners[@]}"; do
        wait "$pid" 2>/dev/null
    done
    burners=()
}
trap stop_burners EXIT
trap 'stop_burners; exit 130' INT TERM

for _ in $(seq "$BURNERS"); do
    "$PY" -c 'while True: pass' &
    burners+=($!)
done

echo "stress_suite: $RUNS run(s) of: $PY -m pytest -q $*"
echo "  burners: $BURNERS busy-loop process(es), pids ${burners[*]}; cpus: $(nproc)"
echo "  commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?'); logs: $LOGS"
echo "  load avg at start: $(cut -d' ' -f1-3 /proc/loadavg)"

green=0
for run in $(seq "$RUNS"); do
    log="$LOGS/run-$run.log"
    began=$(date +%s)
    "$PY" -m pytest -q -p no:cacheprovider "$@" >"$log" 2>&1
    code=$?
    took=$(($(date +%s) - began))
    echo "run $run/$RUNS: exit $code after ${took}s, load avg $(cut -d' ' -f1 /proc/loadavg): $(tail -n 1 "$log")"
    if [ "$code" -eq 0 ]; then
        green=$((green + 1))
    else
        grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/    /'
    fi
done

stop_burners
echo "stress_suite: $green/$RUNS run(s) green with $BURNERS CPU burner(s) beside the suite"
[ "$green" -eq "$RUNS" ]

#!/usr/bin/env bash
# Job status for snakemake's cluster-generic executor: prints running, success
# or failed for the SLURM job id given as the only argument.
# scontrol knows a job until MinJobAge (default 300 s) after it ends, far longer
# than snakemake waits between two checks; after that sacct answers where an
# accounting database exists.
set -uo pipefail
jobid=$1

if out=$(scontrol show job -o "$jobid" 2>&1); then
    state=$(grep -o 'JobState=[A-Z_]*' <<<"$out" | cut -d= -f2)
elif grep -q 'Invalid job id' <<<"$out"; then
    state=$(sacct -j "$jobid" -X -n -P -o State 2>/dev/null | head -n 1 | cut -d' ' -f1)
else
    # The controller did not answer (busy, restarting): ask again next time.
    echo running
    exit 0
fi

case $state in
    COMPLETED) echo success ;;
    PENDING | CONFIGURING | RUNNING | COMPLETING | SUSPENDED | REQUEUED | REQUEUE_HOLD \
        | REQUEUE_FED | RESIZING | SIGNALING | STAGE_OUT | STOPPED | RESV_DEL_HOLD)
        echo running ;;
    *) echo failed ;;  # FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, or purged
esac

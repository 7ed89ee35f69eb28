#!/usr/bin/env bash
# End-to-end test of a cluster profile on a real single-node SLURM cluster:
# sorts a small generated recording through --profile profiles/<PROFILE>, sorts
# it again locally with --cores 2, and checks that both give the identical spike
# train (sorting.h5 and the phy folder). Run by `make test-cluster`.
#
#   tests/cluster/run_slurm_test.sh [slurm|generic]     (default: slurm)
#
# Needs root on Debian/Ubuntu (installs SLURM and munge with apt-get, starts the
# daemons as plain processes; see slurm_local.sh). The cluster is always shut
# down on exit; KEEP_WORK=1 keeps the work folder for inspection.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PROFILE=${1:-slurm}
BIN=$REPO/.venv/bin
NAME=small
[[ -f $REPO/profiles/$PROFILE/config.yaml ]] || { echo "no profile profiles/$PROFILE" >&2; exit 2; }

WORK=$(mktemp -d /tmp/shardsort-cluster-test.XXXXXX)
CLUSTER=$WORK/cluster
cleanup() {
    "$REPO/tests/cluster/slurm_local.sh" stop "$CLUSTER"
    if [[ ${KEEP_WORK:-0} == 1 ]]; then
        echo "work folder kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

elapsed() { echo $((SECONDS - $1)); }

t0=$SECONDS
"$REPO/tests/cluster/slurm_local.sh" start "$CLUSTER"
# shellcheck source=/dev/null
source "$CLUSTER/env"
echo "cluster up in $(elapsed "$t0") s (install included)"

# The lead's fixture helper: 32 channels x 20 s with ground truth. A chunk
# budget of 520 MB cuts it into 6 time chunks, so every per-chunk rule has
# several jobs to bundle into groups.
TABLE=$(cd "$REPO" && PYTHONPATH=$REPO "$BIN/python" -c "
from pathlib import Path
from tests.workflow.conftest import write_small_recording
print(write_small_recording(Path('$WORK/data'), name='$NAME', n_channels=32, duration_s=20.0))
")
printf 'shards:\n  max_memory_mb: 520\n' >"$WORK/shards.yaml"

sort_recording() {
    local workdir=$1
    shift
    mkdir -p "$workdir"
    (cd "$workdir" && "$BIN/snakemake" --snakefile "$REPO/Snakefile" --directory "$workdir" \
        --configfile "$REPO/config/config.yaml" "$WORK/shards.yaml" "$@" \
        --config "recordings=$TABLE") >"$workdir.log" 2>&1 \
        || { tail -n 60 "$workdir.log" >&2; echo "snakemake failed in $workdir (log above)" >&2; return 1; }
}

case $PROFILE in
    # No accounting database here: poll squeue; start polling after 2 s, not 40.
    slurm) cluster_args=(--slurm-status-command squeue --slurm-no-account
        --slurm-init-seconds-before-status-checks 2) ;;
    # The profile's 4 CPUs per group job would never fit this node.
    *) cluster_args=(--cores "$(nproc)") ;;
esac

t0=$SECONDS
sort_recording "$WORK/cluster_run" --profile "$REPO/profiles/$PROFILE" \
    --seconds-between-status-checks 2 "${cluster_args[@]}"
cluster_s=$(elapsed "$t0")

t0=$SECONDS
sort_recording "$WORK/local_run" --cores 2
local_s=$(elapsed "$t0")

# Every SLURM job of the run (MinJobAge keeps finished ones visible).
scontrol show job -o >"$WORK/jobs.txt"
"$BIN/python" - "$WORK" "$NAME" <<'EOF'
import re
import sys
from pathlib import Path

import h5py
import numpy as np

work, name = Path(sys.argv[1]), sys.argv[2]


def spikes(run):
    with h5py.File(work / run / "results" / name / "sorting.h5", "r") as f:
        return f["spikes"][()]


cluster, local = spikes("cluster_run"), spikes("local_run")
assert len(local) > 0, "the local sort found no spikes"
assert cluster.dtype == local.dtype, (cluster.dtype, local.dtype)
assert np.array_equal(cluster, local), f"{len(cluster)} vs {len(local)} spikes differ"
for part in ("spike_times.npy", "spike_clusters.npy"):
    a = (work / "cluster_run" / "results" / name / "phy" / part).read_bytes()
    b = (work / "local_run" / "results" / name / "phy" / part).read_bytes()
    assert a == b, f"phy/{part} differs"

jobs = (work / "jobs.txt").read_text().splitlines()
states = [re.search(r"JobState=(\S+)", j).group(1) for j in jobs]
assert states and all(s == "COMPLETED" for s in states), states


def seconds(runtime):
    """SLURM's [days-]hh:mm:ss in seconds."""
    days, _, hms = runtime.rpartition("-")
    h, m, s = map(int, hms.split(":"))
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + s


run = [seconds(re.search(r"RunTime=(\S+)", j).group(1)) for j in jobs]
print(f"identical: {len(local)} spikes, phy spike_times and spike_clusters")
print(f"SLURM jobs: {len(jobs)}, run time per job: mean {np.mean(run):.1f} s, max {max(run)} s")
EOF
echo "profiles/$PROFILE sort: ${cluster_s} s; local --cores 2 sort: ${local_s} s"
echo "PASSED"

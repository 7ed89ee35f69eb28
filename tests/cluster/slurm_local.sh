#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on 127.0.0.1, run as plain processes
# (no systemd), for trying profiles/slurm on one machine.
#
#   tests/cluster/slurm_local.sh start DIR   install if needed, start munged,
#                                            slurmctld and slurmd; configs,
#                                            state and logs go under DIR
#   source DIR/env                           SLURM_CONF for sbatch/squeue/scontrol
#   tests/cluster/slurm_local.sh stop DIR    stop the daemons, remove the symlink
#
# Needs root (apt-get, daemons, /etc/slurm). Debian/Ubuntu with SLURM 22.05+.
# The SLURM executor plugin's job step drops SLURM_* variables before its
# inner `srun`, so the configuration must also be found at the default path:
# `start` symlinks /etc/slurm/slurm.conf to DIR's file and `stop` removes it.
set -euo pipefail

DEFAULT_CONF=/etc/slurm/slurm.conf

die() {
    echo "slurm_local.sh: $*" >&2
    exit 1
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge \
        || { apt-get update && apt-get install -y --no-install-recommends \
            slurmctld slurmd slurm-client munge; }
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_config() {
    local dir=$1 node cpus mem_mb
    node=$(hostname -s)
    cpus=$(nproc)
    # Leave a tenth of the memory to the daemons and the snakemake process.
    mem_mb=$(awk '/^MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    cat >"$dir/etc/slurm.conf" <<EOF
ClusterName=shardsort
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol for an hour (there is no
# accounting database, so the executor polls squeue).
MinJobAge=3600
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    local dir=$1
    [[ $(id -u) == 0 ]] || die "must run as root (installs packages and starts daemons)"
    if [[ -e $DEFAULT_CONF || -L $DEFAULT_CONF ]]; then
        die "$DEFAULT_CONF exists: a SLURM installation (or another test cluster) is configured here"
    fi
    install_packages
    mkdir -p "$dir"/{etc,munge,state,spool,run,log}
    chmod 700 "$dir/munge"
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed"
    write_config "$dir"
    ln -s "$dir/etc/slurm.conf" "$DEFAULT_CONF"
    echo "export SLURM_CONF=$dir/etc/slurm.conf" >"$dir/env"
    export SLURM_CONF=$dir/etc/slurm.conf
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    local _
    for _ in $(seq 100); do
        if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
            return
        fi
        sleep 0.2
    done
    tail -n 20 "$dir"/log/*.log >&2
    die "the node did not become idle within 20 s (logs above)"
}

running() {
    # A zombie (a daemon whose parent does not reap it, as in containers) has ended.
    [[ -r /proc/$1/stat ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

stop_daemon() {
    local pidfile=$1 pid _
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        running "$pid" || return 0
        sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    local dir=$1
    if [[ -f $dir/run/slurmctld.pid ]]; then
        # Jobs of this private cluster would outlive slurmd as orphans.
        SLURM_CONF=$dir/etc/slurm.conf scancel --full --user "$(id -un)" 2>/dev/null || true
        SLURM_CONF=$dir/etc/slurm.conf timeout 30 bash -c \
            'while [[ -n $(squeue -h -t running,completing 2>/dev/null) ]]; do sleep 0.5; done' || true
    fi
    stop_daemon "$dir/run/slurmd.pid"
    stop_daemon "$dir/run/slurmctld.pid"
    stop_daemon "$dir/run/munged.pid"
    if [[ -L $DEFAULT_CONF && $(readlink "$DEFAULT_CONF") == "$dir/etc/slurm.conf" ]]; then
        rm -f "$DEFAULT_CONF"
    fi
}

case ${1:-} in
    start | stop)
        [[ $# == 2 ]] || die "usage: $0 start|stop DIR"
        "$1" "$(realpath -m "$2")"
        ;;
    *) die "usage: $0 start|stop DIR" ;;
esac

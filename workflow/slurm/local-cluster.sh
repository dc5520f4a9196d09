#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for trying and testing the SLURM profile
# (workflow/profiles/slurm) without a cluster.  Needs root and Debian's packages.
#
#   workflow/slurm/local-cluster.sh start    # install slurm-wlm + munge if missing, write the config,
#                                            # start munged, slurmctld, slurmd; wait until the node is idle
#   workflow/slurm/local-cluster.sh status   # exit 0 when the 3 daemons run and the node is up (idle, mixed, ...)
#   workflow/slurm/local-cluster.sh stop     # stop the daemons (by their pid files)
#
# The cluster: one node (this machine, `hostname -s`, at 127.0.0.1) with the CPUs and memory
# that `slurmd -C` detects, in one partition (default: "drl", override with DRL_SLURM_PARTITION).
# No accounting database (so use `squeue`, not `sacct`, for job status; MinJobAge=3600 keeps
# finished jobs visible to squeue/scontrol for an hour), no cgroups (proctrack/linuxproc,
# task/none: memory limits are not enforced), jobs run as the submitting user.
# It writes /etc/slurm/slurm.conf, and refuses to overwrite one that it did not write itself.
set -euo pipefail

PARTITION=${DRL_SLURM_PARTITION:-drl}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARKER="# Written by drl workflow/slurm/local-cluster.sh"
SPOOL=/var/spool/drl-slurm
LOGDIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
NODE=$(hostname -s)

log() { echo "local-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() { [[ $(id -u) == 0 ]] || die "'$1' needs root (it installs packages and starts system daemons)"; }

running() {  # running PID NAME: process PID is NAME and not a zombie (works without root)
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $stat == "$1 ($2) "* && $stat != "$1 ($2) Z"* ]]
}

alive() {  # alive PIDFILE: the daemon named in the pid file (munged, slurmctld, slurmd) is running
    [[ -s $1 ]] && running "$(cat "$1")" "$(basename "$1" .pid)"
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "slurm is not installed and apt-get is not available"
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

node_line() {  # this node as slurm.conf wants it, from slurmd's own detection
    local detected mem
    detected=$(slurmd -C | head -1)
    [[ $detected == NodeName=* ]] || die "slurmd -C gave no node line: $detected"
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$detected")
    # 95 % of the detected memory: a node configured with more than slurmd finds is drained.
    mem=$((mem * 95 / 100))
    sed -e "s/^NodeName=[^ ]*/NodeName=$NODE NodeAddr=127.0.0.1/" \
        -e "s/RealMemory=[0-9]*/RealMemory=$mem/" <<<"$detected"
}

write_config() {  # prints "changed" when slurm.conf was (re)written
    if [[ -e $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching it"
    fi
    mkdir -p "$CONF_DIR" "$SPOOL/ctld" "$SPOOL/d" "$LOGDIR"
    local node new
    node=$(node_line)
    new=$(cat <<EOF
$MARKER: a single-node test cluster.
ClusterName=drl
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
MinJobAge=3600
InactiveLimit=0
KillWait=10
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
    if [[ ! -e $CONF ]] || [[ $(cat "$CONF") != "$new" ]]; then
        printf '%s\n' "$new" >"$CONF"
        echo changed
    fi
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    local key=/etc/munge/munge.key
    if [[ ! -s $key ]]; then
        log "writing a munge key"
        install -d -o munge -g munge -m 0700 /etc/munge
        dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
    fi
    chown munge:munge "$key" && chmod 0400 "$key"
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.2
    done
    die "munged did not come up (see /var/log/munge/munged.log)"
}

stop_pidfile() {  # stop_pidfile PIDFILE NAME: SIGTERM, wait up to 20 s
    alive "$1" || { rm -f "$1"; return 0; }
    local pid
    pid=$(cat "$1")
    log "stopping $2 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        running "$pid" "$2" || { rm -f "$1"; return 0; }
        sleep 0.2
    done
    die "$2 (pid $pid) did not stop"
}

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1; }

cmd_status() {
    local state=""
    # (sinfo waits several seconds for a controller that is not there)
    alive $CTLD_PID && state=$(node_state || true)
    echo "munged: $(alive $MUNGE_PID && echo "running (pid $(cat $MUNGE_PID))" || echo stopped)"
    echo "slurmctld: $(alive $CTLD_PID && echo "running (pid $(cat $CTLD_PID))" || echo stopped)"
    echo "slurmd: $(alive $SLURMD_PID && echo "running (pid $(cat $SLURMD_PID))" || echo stopped)"
    echo "node $NODE: ${state:-unknown}"
    alive $MUNGE_PID && alive $CTLD_PID && alive $SLURMD_PID && [[ $state =~ ^(idle|mixed|allocated|completing)$ ]]
}

cmd_start() {
    need_root start
    install_packages
    local changed
    changed=$(write_config)
    if [[ -n $changed ]] && { alive $CTLD_PID || alive $SLURMD_PID; }; then
        log "slurm.conf changed: restarting the daemons"
        stop_pidfile $SLURMD_PID slurmd
        stop_pidfile $CTLD_PID slurmctld
    fi
    start_munge
    alive $CTLD_PID || { log "starting slurmctld"; /usr/sbin/slurmctld; }
    alive $SLURMD_PID || { log "starting slurmd"; /usr/sbin/slurmd; }
    local state=""
    for i in $(seq 120); do
        state=$(node_state || true)
        case $state in
            idle|mixed|allocated|completing) log "node $NODE is $state, partition $PARTITION"; return 0 ;;
            down*|drain*|fail*)
                # e.g. left down by an earlier run; the node registered fine, so resume it
                ((i % 10 == 5)) && scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    scontrol show node "$NODE" >&2 || true
    tail -n 20 $LOGDIR/slurmctld.log $LOGDIR/slurmd.log >&2 || true
    die "node $NODE did not become idle in 60 s (state: ${state:-none})"
}

cmd_stop() {
    need_root stop
    stop_pidfile $SLURMD_PID slurmd
    stop_pidfile $CTLD_PID slurmctld
    stop_pidfile $MUNGE_PID munged
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

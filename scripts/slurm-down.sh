#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by scripts/slurm-up.sh (slurmd, slurmctld, munged).
# Idempotent: stopping daemons that are not running is not an error. Running jobs are killed.
set -uo pipefail

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n -E bash "$0" "$@"
    fi
    echo "slurm-down: must run as root (or with passwordless sudo)" >&2
    exit 1
fi

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() { # pidfile name
    local pidfile=$1 name=$2 pid
    if pid_alive "$pidfile"; then
        pid="$(cat "$pidfile")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
        echo "slurm-down: stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

# `scontrol shutdown` stops slurmctld and every slurmd cleanly; then make sure, by the pid files.
slurmd_pid="$(cat /run/slurmd.pid 2>/dev/null || true)"
slurmctld_pid="$(cat /run/slurmctld.pid 2>/dev/null || true)"
if command -v scontrol >/dev/null 2>&1 && pid_alive /run/slurmctld.pid; then
    # Cancel every job first: slurmstepd (and the job) would otherwise outlive slurmd.
    jobs="$(timeout 10 squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ')"
    if [ -n "${jobs// /}" ]; then
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 100); do
            [ -z "$(pgrep -x slurmstepd)" ] && break
            sleep 0.1
        done
    fi
    timeout 10 scontrol shutdown >/dev/null 2>&1 || true
fi
for pid in $slurmd_pid $slurmctld_pid; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
done
stop /run/slurmd.pid slurmd
stop /run/slurmctld.pid slurmctld
stop /run/munge/munged.pid munged
[ -n "$slurmd_pid$slurmctld_pid" ] && echo "slurm-down: slurm daemons stopped"
echo "slurm-down: cluster stopped"

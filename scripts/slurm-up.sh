#!/usr/bin/env bash
# Start a single-node SLURM cluster (munged + slurmctld + slurmd) on this machine.
#
# Idempotent: installs Debian's slurm-wlm and munge when missing, (re)writes /etc/slurm/slurm.conf from
# scripts/slurm.conf.in, starts whatever daemon is not running (restarting them when the config changed),
# waits until the node is idle and `srun hostname` works, then prints one line.
# Works without systemd: the daemons are started directly. Needs root (or passwordless sudo).
#
# Environment: SLURM_UP_TIMEOUT (seconds to wait for the node, default 60).
set -euo pipefail
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATE="$HERE/slurm.conf.in"
CONF=/etc/slurm/slurm.conf
TIMEOUT="${SLURM_UP_TIMEOUT:-60}"
T0=$(date +%s)

die() {
    echo "slurm-up: ERROR: $*" >&2
    for log in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log /var/log/munge/munged.log; do
        if [ -s "$log" ]; then
            echo "---- last lines of $log ----" >&2
            tail -n 15 "$log" >&2 || true
        fi
    done
    exit 1
}
log() { echo "slurm-up: $*"; }

# Say what it does before doing it; outside CI, act only when asked to (a prompt, or SLURM_UP_YES=1).
if [ "${SLURM_UP_CONFIRMED:-}" != 1 ]; then
    echo "slurm-up: this installs slurm-wlm and munge with apt-get (when missing), rewrites $CONF," \
        "creates /etc/munge/munge.key if absent, and starts munged, slurmctld and slurmd, as root (via sudo when needed)."
    if [ "${CI:-}" != true ] && [ "${SLURM_UP_YES:-}" != 1 ]; then
        if [ -t 0 ]; then
            read -r -p "slurm-up: go ahead? [y/N] " answer
            case "$answer" in y|Y|yes|YES) ;; *) echo "slurm-up: nothing done" >&2; exit 1 ;; esac
        else
            echo "slurm-up: not a terminal: nothing done; run 'make slurm-up YES=1' (SLURM_UP_YES=1) to go ahead" >&2
            exit 1
        fi
    fi
    export SLURM_UP_CONFIRMED=1  # said and agreed once: not again after the sudo re-exec below
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n -E bash "$0" "$@"
    fi
    die "must run as root (or with passwordless sudo)"
fi

# ---------------------------------------------------------------- install
need_install=0
for bin in slurmctld slurmd sbatch srun sinfo scontrol munged munge unmunge; do
    command -v "$bin" >/dev/null 2>&1 || need_install=1
done
if [ "$need_install" = 1 ]; then
    command -v apt-get >/dev/null 2>&1 || die "slurm is not installed and apt-get is not available"
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(slurm-wlm munge)
    log "installing ${pkgs[*]} (apt-get)"
    t=$(date +%s)
    # Keep the packages' maintainer scripts from starting the daemons with Debian's defaults (there is
    # no slurm.conf yet); this script starts them itself. Docker-style images already ship such a file.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    # Refresh the package lists only when they do not know the packages (fresh image) or the install fails.
    if ! apt-cache show slurm-wlm >/dev/null 2>&1; then
        apt-get update -qq || die "apt-get update failed"
    fi
    if ! apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/tmp/slurm-up-apt.log 2>&1; then
        apt-get update -qq || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/tmp/slurm-up-apt.log 2>&1 ||
            { tail -n 20 /tmp/slurm-up-apt.log >&2; die "apt-get install ${pkgs[*]} failed (log: /tmp/slurm-up-apt.log)"; }
    fi
    log "installed in $(($(date +%s) - t)) s"
fi

# ---------------------------------------------------------------- slurm.conf
[ -r "$TEMPLATE" ] || die "template $TEMPLATE not found"
# `slurmd -C` prints the node exactly as slurmd sees it, e.g.
# NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24152
hw="$(slurmd -C 2>/dev/null | head -n 1)" || true
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$hw"; }
NODENAME="$(field NodeName)"
CPUS="$(field CPUs)"
SOCKETS="$(field SocketsPerBoard)"
CORES="$(field CoresPerSocket)"
THREADS="$(field ThreadsPerCore)"
MEM="$(field RealMemory)"
[ -n "$NODENAME" ] && [ -n "$CPUS" ] && [ -n "$MEM" ] || die "could not parse 'slurmd -C' output: '$hw'"
# Leave some headroom so that slurmd never finds less memory than configured (it would drain the node).
REALMEM=$((MEM * 95 / 100))
DEFMEM=$((REALMEM / CPUS))
[ "$DEFMEM" -gt 1024 ] && DEFMEM=1024

mkdir -p /etc/slurm
new_conf="$(sed -e "s/@NODENAME@/$NODENAME/g" -e "s/@CPUS@/$CPUS/g" -e "s/@SOCKETS@/$SOCKETS/g" \
    -e "s/@CORES@/$CORES/g" -e "s/@THREADS@/$THREADS/g" -e "s/@REALMEM@/$REALMEM/g" \
    -e "s/@DEFMEM@/$DEFMEM/g" "$TEMPLATE")"
conf_changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" >"$CONF"
    chmod 644 "$CONF"
    conf_changed=1
    log "wrote $CONF (node $NODENAME: $CPUS CPUs, RealMemory=$REALMEM MB)"
fi

mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chmod 755 /var/spool/slurmctld /var/spool/slurmd /var/log/slurm

# ---------------------------------------------------------------- munge
install -d -o munge -g munge -m 0700 /etc/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0700 /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
    log "starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged --force || die "munged failed to start"
    for _ in $(seq 1 50); do munge_ok && break; sleep 0.1; done
    munge_ok || die "munge credentials do not round-trip (munge -n | unmunge)"
fi

# ---------------------------------------------------------------- sacct shim
# Without slurmdbd, `sacct` only says "Slurm accounting storage is disabled" (exit 1). submitit (1.5) learns
# job states from `sacct -o JobID,State,NodeList --parsable2 -j ID...` only, so a job that ends without a
# result file (scancel, node failure, killed by the OOM killer) would never look finished and
# `job.result()` would wait forever. This wrapper, put ahead of /usr/bin on PATH, answers such queries
# from `squeue -t all` (finished jobs stay there for MinJobAge seconds) when the real sacct refuses.
# Anything else goes to the real sacct unchanged. MODEXP_SACCT_SHIM=0 skips (and removes) it.
SHIM=/usr/local/bin/sacct
if [ "${MODEXP_SACCT_SHIM:-1}" = 0 ]; then
    if [ -f "$SHIM" ] && grep -q 'modexp-sacct-shim' "$SHIM"; then rm -f "$SHIM"; fi
elif [ ! -e "$SHIM" ] || grep -q 'modexp-sacct-shim' "$SHIM"; then
    mkdir -p /usr/local/bin
    cat >"$SHIM.tmp" <<'SHIM_EOF'
#!/usr/bin/env bash
# modexp-sacct-shim (written by scripts/slurm-up.sh): when accounting storage is disabled, answer
# `sacct [-P|--parsable2] [-n] -o FIELDS -j ID[,ID]...` from `squeue -t all`; otherwise run the real sacct.
REAL=/usr/bin/sacct
err="$(mktemp)"
trap 'rm -f "$err"' EXIT
out="$("$REAL" "$@" 2>"$err")" && rc=0 || rc=$?
if [ "$rc" = 0 ]; then
    [ -n "$out" ] && printf '%s\n' "$out"
    cat "$err" >&2
    exit 0
fi
if ! grep -q 'accounting storage is disabled' "$err"; then
    [ -n "$out" ] && printf '%s\n' "$out"
    cat "$err" >&2
    exit "$rc"
fi
fields="JobID,JobName,Partition,Account,AllocCPUS,State" header=1 sep="|" jobs=""
while [ $# -gt 0 ]; do
    case "$1" in
    -o | --format) fields="$2"; shift ;;
    --format=*) fields="${1#*=}" ;;
    -j | --jobs) jobs="$jobs,$2"; shift ;;
    --jobs=*) jobs="$jobs,${1#*=}" ;;
    -P | --parsable2 | -p | --parsable) ;;
    -n | --noheader) header=0 ;;
    -X | --allocations | -a | --allusers | -D | --duplicates) ;;
    *) cat "$err" >&2; exit "$rc" ;;  # an option we do not emulate: behave like the real sacct
    esac
    shift
done
fmt=""
IFS=',' read -r -a names <<<"$fields"
for f in "${names[@]}"; do
    case "${f%%%*}" in
    JobID | JobIDRaw) c=%i ;; State) c=%T ;; NodeList) c=%N ;; JobName) c=%j ;; Partition) c=%P ;;
    User) c=%u ;; Account) c=%a ;; AllocCPUS | NCPUS) c=%C ;; Elapsed) c=%M ;; Reason) c=%r ;;
    *) cat "$err" >&2; exit "$rc" ;;
    esac
    fmt="$fmt${fmt:+$sep}$c"
done
[ "$header" = 1 ] && (IFS="$sep"; echo "${names[*]}")
jobs="${jobs#,}"
if [ -n "$jobs" ]; then
    squeue -h -t all -r -o "$fmt" -j "$jobs" 2>/dev/null
else
    squeue -h -t all -r -o "$fmt" 2>/dev/null
fi
exit 0
SHIM_EOF
    chmod 755 "$SHIM.tmp"
    mv "$SHIM.tmp" "$SHIM"
fi

# ---------------------------------------------------------------- slurm daemons
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_daemon() { # pidfile name
    local pidfile=$1 name=$2
    if pid_alive "$pidfile"; then
        log "stopping $name (config changed)"
        kill "$(cat "$pidfile")" 2>/dev/null || true
        for _ in $(seq 1 100); do pid_alive "$pidfile" || break; sleep 0.1; done
        pid_alive "$pidfile" && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

if [ "$conf_changed" = 1 ]; then
    stop_daemon /run/slurmd.pid slurmd
    stop_daemon /run/slurmctld.pid slurmctld
fi

if ! pid_alive /run/slurmctld.pid; then
    log "starting slurmctld"
    /usr/sbin/slurmctld || die "slurmctld failed to start"
fi
for _ in $(seq 1 $((TIMEOUT * 2))); do
    scontrol ping 2>/dev/null | grep -q 'is UP' && break
    sleep 0.5
done
scontrol ping 2>/dev/null | grep -q 'is UP' || die "slurmctld does not answer 'scontrol ping'"

if ! pid_alive /run/slurmd.pid; then
    log "starting slurmd"
    /usr/sbin/slurmd || die "slurmd failed to start"
fi

# ---------------------------------------------------------------- wait for the node
deadline=$((T0 + TIMEOUT))
state=""
while :; do
    state="$(sinfo -h -N -n "$NODENAME" -o '%T' 2>/dev/null | head -n 1)"
    case "$state" in
    idle | mixed | allocated | completing) break ;;
    drain* | down* | fail* | *drain*)
        # A node left down/drained by an earlier run (e.g. the machine rebooted); bring it back.
        scontrol update NodeName="$NODENAME" State=RESUME >/dev/null 2>&1 || true
        ;;
    esac
    [ "$(date +%s)" -ge "$deadline" ] && die "node $NODENAME not ready after ${TIMEOUT}s (state: '${state:-no answer}'; sinfo -R: $(sinfo -h -R 2>/dev/null | tr -s ' '))"
    sleep 0.5
done

if [ "$state" = idle ] || [ "$state" = mixed ]; then
    out="$(timeout 30 srun -N1 -n1 -c1 --mem=16M --quiet hostname 2>&1)" || die "'srun -N1 hostname' failed: $out"
else
    out="(skipped: node busy with jobs)"
fi

log "cluster 'modexp' is up: node $NODENAME ($state, $CPUS CPUs, ${REALMEM} MB), partition debug; srun -> $out ($(($(date +%s) - T0)) s)"

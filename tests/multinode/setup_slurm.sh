#!/bin/bash
# A throw-away SLURM cluster on this machine, every file of it under one folder (root only).
#
#   tests/multinode/setup_slurm.sh start DIR     # install slurm-wlm + munge if missing; start munged,
#                                                # slurmctld and one slurmd; print `export SLURM_CONF=...`
#   tests/multinode/setup_slurm.sh stop DIR      # stop exactly the daemons that `start DIR` started
#
# Then `SLURM_CONF=DIR/slurm.conf sbatch ...` submits to it. One node (this host) with all its cores,
# or, with SLURM_NODES="name=address@namespace ..." (emulated nodes, tests/multinode/netns.py) and
# SLURMCTLD_ADDR (this host's address on their network), one slurmd per node inside its namespace with
# SLURM_NODE_CPUS cores each (default 1), host names in /etc/netns/<namespace>/hosts; one partition,
# requeue allowed; munge authentication with its own key and socket; no cgroups
# (proctrack/linuxproc), so it runs inside a container. Ports come from the environment when set
# (SLURMCTLD_PORT, SLURMD_PORT), so two clusters can coexist.
set -euo pipefail
cmd=${1:?start or stop}
dir=$(realpath -m "${2:?a folder for the cluster}")

stop() {
    for pidfile in "$dir"/run/slurmd*.pid "$dir/run/slurmctld.pid" "$dir/run/munged.pid"; do
        if [ -f "$pidfile" ]; then
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
    for ns in $(cat "$dir/namespaces" 2>/dev/null); do rm -f "/etc/netns/$ns/hosts"; rmdir "/etc/netns/$ns" 2>/dev/null || true; done
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: needs root (slurmd runs jobs as their users)" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

mkdir -p "$dir"/{run,state,spool,log,munge}
chmod 700 "$dir/munge"
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
ctld_port=${SLURMCTLD_PORT:-$(( 20000 + RANDOM % 20000 ))}
slurmd_port=${SLURMD_PORT:-$(( ctld_port + 1 ))}

if [ ! -f "$dir/munge/munge.key" ]; then
    dd if=/dev/urandom bs=1 count=1024 of="$dir/munge/munge.key" status=none
    chmod 400 "$dir/munge/munge.key"
fi
# --force: munged refuses to run as root, or with a key outside /etc/munge, unless told.
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.sock" \
    --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed"

nodes=${SLURM_NODES:-}
ctld_addr=${SLURMCTLD_ADDR:-127.0.0.1}
cat > "$dir/slurm.conf" <<EOF
ClusterName=rlhfds
SlurmctldHost=$host($ctld_addr)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: SLURM holds a requeued job back this long (default 120 s) so old credentials expire.
AuthInfo=socket=$dir/munge/munge.sock,cred_expire=10
CryptoType=crypto/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
SlurmdTimeout=60
InactiveLimit=0
EOF
if [ -z "$nodes" ]; then
    echo "NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN" >> "$dir/slurm.conf"
else
    : > "$dir/namespaces"
    hosts="127.0.0.1 localhost"
    for spec in $nodes; do
        name=${spec%%=*}; rest=${spec#*=}; addr=${rest%@*}; ns=${rest#*@}
        echo "NodeName=$name NodeAddr=$addr CPUs=${SLURM_NODE_CPUS:-1} RealMemory=$(( mem / 4 )) State=UNKNOWN" \
            >> "$dir/slurm.conf"
        hosts="$hosts"$'\n'"$addr $name"
        echo "$ns" >> "$dir/namespaces"
    done
    hosts="$hosts"$'\n'"$ctld_addr $host"
fi
echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" >> "$dir/slurm.conf"
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF" -i
if [ -z "$nodes" ]; then
    mkdir -p "$dir/spool/$host"
    slurmd -f "$SLURM_CONF" -N "$host"
    want=1
else
    want=0
    cgroup_mounts=$(awk '$2 ~ "^/sys/fs/cgroup" {printf "mkdir -p %s; mount -t %s -o %s none %s; ", $2, $3, $4, $2}' \
        /proc/self/mounts)
    for spec in $nodes; do
        name=${spec%%=*}; rest=${spec#*=}; ns=${rest#*@}
        mkdir -p "$dir/spool/$name" "/etc/netns/$ns"
        # `ip netns exec` mounts this over /etc/hosts for the namespace: the nodes' names resolve there.
        printf '%s\n' "$hosts" > "/etc/netns/$ns/hosts"
        # `ip netns exec` mounts a fresh /sys for the namespace, without the cgroup filesystems that
        # slurmd looks at even with proctrack/linuxproc: mount the host's again, as they are.
        ip netns exec "$ns" sh -c "$cgroup_mounts exec slurmd -f '$SLURM_CONF' -N '$name'"
        want=$(( want + 1 ))
    done
fi
for _ in $(seq 150); do
    if [ "$(sinfo -h -N -o %T 2>/dev/null | grep -cx idle)" = "$want" ]; then
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.2
done
echo "$0: the nodes did not become idle; logs in $dir/log" >&2
sinfo -N >&2 || true
exit 1

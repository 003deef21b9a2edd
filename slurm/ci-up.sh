#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine for the tests marked `slurm` (and for trying profiles).
#
#   bash slurm/ci-up.sh            # root; installs the Debian packages if missing; idempotent
#   bash slurm/ci-down.sh          # stops what this started, by PID
#
# Debian 12 packages: slurmctld slurmd slurm-client munge, plus slurmdbd + mariadb-server so that
# `sacct` works (submitit reads job states only through sacct; without it a cancelled or killed job
# never counts as done). No systemd and no cgroups are needed (proctrack/linuxproc, task/none).
# Timeouts are shortened for tests (see slurm/README.md for why each one matters).
# Environment: SLURM_BASE (state, logs, pid files; default /tmp/senseflow-slurm), WITH_DBD (default 1).
set -euo pipefail

B=${SLURM_BASE:-/tmp/senseflow-slurm}
WITH_DBD=${WITH_DBD:-1}
T0=$(date +%s%N)
say()  { echo "slurm/ci-up.sh: $*"; }
fail() { echo "slurm/ci-up.sh: ERROR: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  fail "$what did not come up within ${secs}s (logs in $B/log/)"
}

[ "$(id -u)" = 0 ] || fail "needs root: it installs packages, writes /etc/slurm and starts daemons"
mkdir -p "$B"/{state,spool,log}

# --- already running? -------------------------------------------------------------------------------
if alive "$B/slurmctld.pid" && alive "$B/slurmd.pid" && sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
  say "cluster already up: $(sinfo -h -o '%P %D %t' | tr '\n' ' ')"
  exit 0
fi

# --- packages -----------------------------------------------------------------------------------------
pkgs=(slurmctld slurmd slurm-client munge)
need=(slurmctld slurmd sinfo munged)
if [ "$WITH_DBD" = 1 ]; then pkgs+=(slurmdbd mariadb-server); need+=(slurmdbd mariadbd); fi
missing=0
for b in "${need[@]}"; do command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing=1; done
if [ "$missing" = 1 ]; then
  command -v apt-get >/dev/null || fail "SLURM is not installed and apt-get is unavailable; install: ${pkgs[*]}"
  say "installing ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$B/log/apt.log" 2>&1; then
    apt-get update -q >>"$B/log/apt.log" 2>&1 || true
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$B/log/apt.log" 2>&1 \
      || { tail -n 20 "$B/log/apt.log" >&2; fail "apt-get install ${pkgs[*]} failed (log: $B/log/apt.log)"; }
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

# --- configuration ------------------------------------------------------------------------------------
H=$(hostname -s)
NCPU=$(getconf _NPROCESSORS_ONLN)   # not nproc: it honours OMP_NUM_THREADS
MEM_MB=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 85 / 100 ))
if [ "$WITH_DBD" = 1 ]; then
  ACCT=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStoragePort=6819'
else
  ACCT='AccountingStorageType=accounting_storage/none'
fi
mkdir -p /etc/slurm
cat > /etc/slurm/slurm.conf <<CONF
# written by senseflow slurm/ci-up.sh: one node, test timings
ClusterName=senseflow-ci
SlurmctldHost=${H}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job is eligible again after cred_expire seconds (default 120)
AuthInfo=cred_expire=5
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
${ACCT}
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# start submitted and requeued jobs at once instead of on the next 3 s / 30 s scheduler pass
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it a job with no --mem takes the whole node
DefMemPerCPU=1000
ReturnToService=2
# submitit's job process ignores SIGTERM: SIGKILL it 5 s later, not 30
KillWait=5
InactiveLimit=0
MinJobAge=300
Waittime=0
MailProg=/bin/true
StateSaveLocation=$B/state
SlurmdSpoolDir=$B/spool
SlurmctldPidFile=$B/slurmctld.pid
SlurmdPidFile=$B/slurmd.pid
SlurmctldLogFile=$B/log/slurmctld.log
SlurmdLogFile=$B/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=${H} NodeAddr=127.0.0.1 CPUs=${NCPU} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${H} Default=YES MaxTime=60 State=UP
CONF

# --- munge ------------------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
fi
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- /usr/sbin/munged      # daemonizes; as the munge user, its log file is "secure"
  wait_for 10 munged sh -c 'munge -n </dev/null | unmunge'
  cp /run/munge/munged.pid "$B/munged.pid"  # ours: ci-down.sh stops it
fi

# --- accounting database (sacct) ----------------------------------------------------------------------
if [ "$WITH_DBD" = 1 ]; then
  if ! alive "$B/mariadb.pid" && ! mariadb -e 'select 1' >/dev/null 2>&1; then   # else: ours, or one already here
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    nohup mariadbd --user=mysql --skip-networking --innodb-buffer-pool-size=64M >"$B/log/mariadb.log" 2>&1 &
    echo $! > "$B/mariadb.pid"
    wait_for 30 MariaDB mariadb -e 'select 1'
  fi
  # Job ids restart at 1 with a new state folder; old accounting rows with the same ids would make
  # sacct (and submitit) report a finished state for a new job: start from an empty database then.
  [ -e "$B/state/job_state" ] || mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db"
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$B/log/slurmdbd.log
PidFile=$B/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
  chmod 600 /etc/slurm/slurmdbd.conf
  if ! alive "$B/slurmdbd.pid"; then
    slurmdbd
    wait_for 30 slurmdbd bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
  fi
fi

# --- controller and node -----------------------------------------------------------------------------
alive "$B/slurmctld.pid" || slurmctld
alive "$B/slurmd.pid" || slurmd
for _ in $(seq 1 300); do
  sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)' && break
  sleep 0.1
done
if ! sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
  tail -n 15 "$B/log/slurmctld.log" "$B/log/slurmd.log" >&2 2>/dev/null || true
  fail "the node did not become idle within 30s (sinfo: $(sinfo -h -o '%t %E' 2>&1 | head -1))"
fi
if [ "$WITH_DBD" = 1 ] && ! sacct -n -X -o JobID >/dev/null 2>&1; then
  fail "sacct does not answer (slurmdbd log: $B/log/slurmdbd.log)"
fi
ms=$(( ($(date +%s%N) - T0) / 1000000 ))
say "cluster up in $((ms / 1000)).$(printf %03d $((ms % 1000)))s: $(sinfo -h -o '%P %D %t %c cpus' | tr '\n' ' ')"

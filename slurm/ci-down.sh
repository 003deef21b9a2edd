#!/usr/bin/env bash
# Stop the cluster started by slurm/ci-up.sh, by the PIDs it recorded (never by process name).
# Jobs still queued or running are cancelled first, while slurmd is up (else their processes linger).
B=${SLURM_BASE:-/tmp/senseflow-slurm}
export PATH="$PATH:/usr/sbin:/sbin"
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if alive "$B/slurmctld.pid" && command -v squeue >/dev/null; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$jobs" ]; then
    scancel $jobs 2>/dev/null
    for _ in $(seq 1 150); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.1; done
  fi
fi
pids=()
for f in "$B/slurmd.pid" "$B/slurmctld.pid" "$B/slurmdbd.pid" "$B/mariadb.pid" "$B/munged.pid"; do
  alive "$f" && pids+=("$(cat "$f")")
done
for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done            # all at once: each takes ~2 s to exit
for _ in $(seq 1 300); do
  left=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
  [ "$left" = 0 ] && break; sleep 0.05
done
for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && { echo "slurm/ci-down.sh: $p still running, SIGKILL" >&2; kill -9 "$p"; }; done
rm -f "$B/slurmd.pid" "$B/slurmctld.pid" "$B/slurmdbd.pid" "$B/mariadb.pid" "$B/munged.pid"
echo "slurm/ci-down.sh: stopped ${#pids[@]} daemons"

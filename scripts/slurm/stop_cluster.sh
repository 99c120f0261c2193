#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by scripts/slurm/setup_cluster.sh, in reverse order:
# slurmd, slurmctld, slurmdbd, then MariaDB and munged if (and only if) setup_cluster.sh started them.
# Daemons are found by their pid files, never by name. Job accounting (MariaDB) and the controller's
# state are kept; `--purge` also deletes the state, spool and log directory (RIS_SLURM_BASE).
set -euo pipefail
BASE=${RIS_SLURM_BASE:-/var/tmp/ris-slurm}
[ "$(id -u)" -eq 0 ] || { echo "stop_cluster: must run as root" >&2; exit 1; }

# stop NAME PIDFILE: SIGTERM the pid in PIDFILE and wait up to 30 s for it to exit.
stop() {
  local name=$1 pidfile=$2 pid
  if [ ! -s "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "stop_cluster: $name not running"
    return 0
  fi
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 60); do
    kill -0 "$pid" 2>/dev/null || { echo "stop_cluster: $name stopped"; return 0; }
    sleep 0.5
  done
  echo "stop_cluster: $name (pid $pid) did not stop within 30 s" >&2
  return 1
}

stop slurmd "$BASE/run/slurmd.pid"
stop slurmctld "$BASE/run/slurmctld.pid"
stop slurmdbd "$BASE/run/slurmdbd.pid"
if [ -e "$BASE/run/mariadbd.started-here" ]; then
  stop MariaDB /run/mysqld/mysqld.pid && rm -f "$BASE/run/mariadbd.started-here"
fi
if [ -e "$BASE/run/munged.started-here" ]; then
  stop munged /run/munge/munged.pid && rm -f "$BASE/run/munged.started-here"
fi
if [ "${1:-}" = "--purge" ]; then
  rm -rf "$BASE"
  echo "stop_cluster: removed $BASE"
fi

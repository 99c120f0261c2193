#!/usr/bin/env bash
# Install, configure and start a single-node SLURM cluster with accounting on this machine:
# munged + MariaDB + slurmdbd + slurmctld + slurmd, from Debian's packages (slurm-wlm 22.05 on bookworm).
# For CI (.ci/run) and for trying the SLURM profile (workflow/profiles/slurm) on one machine.
#
#   sudo bash scripts/slurm/setup_cluster.sh     # ~30-60 s from nothing, ~1 s when already up
#   sudo bash scripts/slurm/stop_cluster.sh      # stop the daemons it started
#
# Idempotent: packages are installed only when missing, configs rewritten only when they change, and
# daemons that already run are left alone (a changed slurm.conf restarts slurmctld and slurmd). Ends
# when `sinfo` shows the node idle, or fails with the daemons' log tails.
# No systemd is needed: the daemons are started by hand, in order (see shared notes/environment.md).
#
# Settings (environment variables):
#   RIS_SLURM_CLUSTER      cluster name                     (default: ris)
#   RIS_SLURM_PARTITION    the only partition               (default: debug)
#   RIS_SLURM_CPUS         CPUs the node advertises         (default: 2)
#   RIS_SLURM_REAL_MEMORY  node memory in MB                (default: 90% of MemTotal)
#   RIS_SLURM_BASE         state, spool, pid and log files  (default: /var/tmp/ris-slurm)
#   RIS_SLURM_FORCE=1      overwrite an /etc/slurm/slurm.conf this script did not write
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CLUSTER=${RIS_SLURM_CLUSTER:-ris}
PARTITION=${RIS_SLURM_PARTITION:-debug}
CPUS=${RIS_SLURM_CPUS:-2}
BASE=${RIS_SLURM_BASE:-/var/tmp/ris-slurm}
MARKER="# managed-by: ris scripts/slurm/setup_cluster.sh"
START=$(date +%s)

log() { echo "[setup_cluster $(($(date +%s) - START))s] $*"; }
die() {
  echo "[setup_cluster] ERROR: $*" >&2
  for f in "$BASE"/log/*.log; do
    [ -f "$f" ] && { echo "--- tail of $f" >&2; tail -n 20 "$f" >&2; }
  done
  exit 1
}
# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.5 s until it succeeds.
wait_for() {
  local secs=$1 what=$2
  shift 2
  local end=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.5
  done
}
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts system daemons)"

# --- 1. packages -------------------------------------------------------------------------------
PKGS=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server mariadb-client)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  # Keep the packages' maintainer scripts from starting daemons themselves (we start them below).
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy_added=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$policy_added" = 1 ]; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  log "packages installed"
else
  log "packages already installed"
fi

# --- 2. configuration --------------------------------------------------------------------------
mkdir -p "$BASE"/{state,spool,run,log} /etc/slurm
if [ -n "${RIS_SLURM_REAL_MEMORY:-}" ]; then
  REAL_MEMORY=$RIS_SLURM_REAL_MEMORY
else
  mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
  REAL_MEMORY=$((mem_kb * 9 / 10 / 1024))
fi
DEF_MEM_PER_CPU=$((REAL_MEMORY / CPUS < 1000 ? REAL_MEMORY / CPUS : 1000))

# install_conf TEMPLATE DEST MODE SEDARGS...: render; returns 0 when DEST changed, 1 when unchanged.
install_conf() {
  local template=$1 dest=$2 mode=$3 tmp
  shift 3
  if [ -e "$dest" ] && ! grep -qF "$MARKER" "$dest" && [ "${RIS_SLURM_FORCE:-0}" != 1 ]; then
    die "$dest exists and was not written by this script; set RIS_SLURM_FORCE=1 to overwrite it"
  fi
  tmp=$(mktemp)
  sed "$@" "$template" >"$tmp"
  if [ -e "$dest" ] && cmp -s "$tmp" "$dest"; then
    rm -f "$tmp"
    return 1
  fi
  install -m "$mode" "$tmp" "$dest"
  rm -f "$tmp"
  return 0
}

slurm_conf_changed=0
if install_conf "$HERE/slurm.conf" /etc/slurm/slurm.conf 0644 \
  -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@PARTITION@|$PARTITION|g" -e "s|@CPUS@|$CPUS|g" \
  -e "s|@REAL_MEMORY@|$REAL_MEMORY|g" -e "s|@DEF_MEM_PER_CPU@|$DEF_MEM_PER_CPU|g" -e "s|@BASE@|$BASE|g"; then
  slurm_conf_changed=1
  log "wrote /etc/slurm/slurm.conf (CPUs=$CPUS RealMemory=$REAL_MEMORY DefMemPerCPU=$DEF_MEM_PER_CPU)"
fi

# The database password is generated once and kept in slurmdbd.conf (mode 600, root only).
DB_PASSWORD=$(sed -n 's/^StoragePass=//p' /etc/slurm/slurmdbd.conf 2>/dev/null || true)
[ -n "$DB_PASSWORD" ] || DB_PASSWORD=$(head -c 32 /dev/urandom | sha256sum | cut -c1-32)
slurmdbd_conf_changed=0
if install_conf "$HERE/slurmdbd.conf" /etc/slurm/slurmdbd.conf 0600 \
  -e "s|@BASE@|$BASE|g" -e "s|@DB_PASSWORD@|$DB_PASSWORD|g"; then
  slurmdbd_conf_changed=1
  log "wrote /etc/slurm/slurmdbd.conf"
fi

# stop_daemon NAME PIDFILE: stop a daemon started earlier (used when its configuration changed).
stop_daemon() {
  if pid_alive "$2"; then
    log "restarting $1 (configuration changed)"
    kill "$(cat "$2")"
    wait_for 30 "$1 to stop" bash -c "! kill -0 $(cat "$2") 2>/dev/null"
  fi
}
[ "$slurmdbd_conf_changed" = 1 ] && stop_daemon slurmdbd "$BASE/run/slurmdbd.pid"
if [ "$slurm_conf_changed" = 1 ]; then
  stop_daemon slurmd "$BASE/run/slurmd.pid"
  stop_daemon slurmctld "$BASE/run/slurmctld.pid"
fi

# --- 3. munge ----------------------------------------------------------------------------------
munge_ok() { { munge -n </dev/null | unmunge; } >/dev/null 2>&1; }
if munge_ok; then
  log "munged already running"
else
  if [ ! -s /etc/munge/munge.key ]; then
    install -d -o munge -g munge -m 0700 /etc/munge
    head -c 1024 /dev/urandom >/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  touch "$BASE/log/munged.log" && chown munge:munge "$BASE/log/munged.log"
  # munged refuses a pid file in a directory it cannot write; keep it in /run/munge (its default).
  runuser -u munge -- /usr/sbin/munged --log-file="$BASE/log/munged.log" </dev/null >/dev/null 2>&1 ||
    die "munged did not start"
  wait_for 20 munged munge_ok
  touch "$BASE/run/munged.started-here"   # stop_cluster.sh stops munged only when this exists
  log "munged started"
fi

# --- 4. MariaDB --------------------------------------------------------------------------------
db_ok() { mariadb-admin --protocol=socket ping; }
if db_ok >/dev/null 2>&1; then
  log "MariaDB already running"
else
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if [ ! -d /var/lib/mysql/mysql ]; then
    log "initialising the MariaDB data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$BASE/log/mariadb-install.log" 2>&1 ||
      die "mariadb-install-db failed"
  fi
  # Its pid file stays in /run/mysqld (mariadbd runs as mysql and cannot write under $BASE/run).
  setsid mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
    </dev/null >>"$BASE/log/mariadb.log" 2>&1 &
  wait_for 60 MariaDB db_ok
  touch "$BASE/run/mariadbd.started-here"   # stop_cluster.sh stops MariaDB only when this exists
  log "MariaDB started"
fi
mariadb --protocol=socket <<SQL || die "could not create the database user slurm"
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# --- 5. slurmdbd and the cluster's accounting record -------------------------------------------
dbd_ok() { sacctmgr -n -P list cluster format=cluster; }
if pid_alive "$BASE/run/slurmdbd.pid"; then
  log "slurmdbd already running"
else
  slurmdbd </dev/null >>"$BASE/log/slurmdbd.stdout" 2>&1 || die "slurmdbd did not start"
  log "slurmdbd started"
fi
wait_for 60 "slurmdbd to answer sacctmgr" dbd_ok
if dbd_ok 2>/dev/null | grep -qx "$CLUSTER"; then
  log "cluster $CLUSTER already registered"
else
  # `sacctmgr -i add cluster` exits 1 when the cluster exists: hence the check above.
  sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed"
  log "cluster $CLUSTER registered in slurmdbd"
fi

# --- 6. slurmctld and slurmd -------------------------------------------------------------------
ctld_ok() { scontrol ping | grep -q "is UP"; }
if pid_alive "$BASE/run/slurmctld.pid"; then
  log "slurmctld already running"
else
  slurmctld </dev/null >>"$BASE/log/slurmctld.stdout" 2>&1 || die "slurmctld did not start"
  log "slurmctld started"
fi
wait_for 60 slurmctld ctld_ok
if pid_alive "$BASE/run/slurmd.pid"; then
  log "slurmd already running"
else
  # -N localhost: the node is named localhost in slurm.conf, whatever this machine's hostname is.
  slurmd -N localhost </dev/null >>"$BASE/log/slurmd.stdout" 2>&1 || die "slurmd did not start"
  log "slurmd started"
fi

node_state() { sinfo -h -n localhost -o %T 2>/dev/null | head -n 1; }
node_ready() { case "$(node_state)" in idle | mixed | allocated | completing) return 0 ;; *) return 1 ;; esac }
end=$(($(date +%s) + 90))
until node_ready; do
  state=$(node_state)
  # A node left down or drained by an earlier run (ReturnToService=2 usually handles it).
  case "$state" in
    down* | drain* | fail*) scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true ;;
  esac
  [ "$(date +%s)" -lt "$end" ] || die "node localhost not idle after 90 s (state: '${state:-none}')"
  sleep 0.5
done
log "cluster $CLUSTER is up:"
sinfo -N -o "%N %P %T %c %m"

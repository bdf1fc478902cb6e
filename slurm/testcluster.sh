#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, started by hand (no service manager), for vqbench's
# real-Slurm tests and for trying `vqbench sweep run --executor slurm` locally. Needs root.
#
#   bash slurm/testcluster.sh install                  apt-get slurm-wlm munge slurmdbd mariadb-server
#   bash slurm/testcluster.sh start [--accounting]     munged (+ mariadbd, slurmdbd), slurmctld, slurmd
#   bash slurm/testcluster.sh stop                     cancel every job, stop every daemon started here
#   bash slurm/testcluster.sh status
#   eval "$(bash slurm/testcluster.sh env)"            export SLURM_CONF for sbatch/squeue/sacct/...
#
# `start` on a running cluster restarts the Slurm daemons in the requested mode (with or without
# accounting) on a fresh state; munged and mariadbd stay up. Without accounting `sacct` exits 1.
# Settings (environment): VQBENCH_SLURM_DIR (state, logs, configs; default /tmp/vqbench-slurm),
# VQBENCH_SLURM_MAX_ARRAY (MaxArraySize, default 5: small, so the tests see arrays split),
# VQBENCH_SLURM_PORT (slurmctld port; slurmd, slurmdbd and mariadbd use the next three).
set -euo pipefail

DIR=${VQBENCH_SLURM_DIR:-/tmp/vqbench-slurm}
MAX_ARRAY=${VQBENCH_SLURM_MAX_ARRAY:-5}
PORT=${VQBENCH_SLURM_PORT:-6917}
CLUSTER=vqbench
CONF=$DIR/etc/slurm.conf
DB_PASS=vqbench-slurm-test

log() { echo "testcluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then return 1; fi
    sleep 0.2
  done
}

stop_pidfile() {  # stop_pidfile PIDFILE NAME: TERM, then KILL after 10 s
  local file=$1 name=$2 pid
  [[ -f $file ]] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local end=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < end)); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name ($pid) ignored SIGTERM: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name ($pid)"
  fi
  rm -f "$file"
}

cmd_install() {
  local pkgs=(slurm-wlm munge slurmdbd mariadb-server)
  if command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v slurmdbd >/dev/null \
     && command -v mariadbd >/dev/null; then
    log "already installed: $(slurmctld -V)"
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${pkgs[@]}" >/dev/null
  log "installed $(slurmctld -V)"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0  # a munged already answers (ours or the machine's): reuse it
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged bash -c 'munge -n | unmunge' || die "munged did not start (see /var/log/munge/munged.log)"
  cp /run/munge/munged.pid "$DIR/run/munged.pid"  # we started it: `stop` stops it
  log "munged started"
}

start_mariadb() {
  local data=$DIR/mysql sock=$DIR/run/mysqld.sock
  pid_alive "$DIR/run/mariadbd.pid" && return 0
  mkdir -p "$data" "$DIR/run"
  chown mysql:mysql "$data" "$DIR/run"
  if [[ ! -d $data/mysql ]]; then
    mariadb-install-db --user=mysql --datadir="$data" --auth-root-authentication-method=socket \
      --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: $DIR/log/mariadb-install.log"
  fi
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  (setsid mariadbd --no-defaults --user=mysql --datadir="$data" --socket="$sock" --bind-address=127.0.0.1 \
     --port=$((PORT + 3)) --pid-file="$DIR/run/mariadbd.pid" --skip-name-resolve \
     --log-error="$DIR/log/mariadbd.log" </dev/null >/dev/null 2>&1 &)
  wait_for 30 mariadbd mariadb --no-defaults -S "$sock" -e 'select 1' \
    || die "mariadbd did not start (see $DIR/log/mariadbd.log)"
  mariadb --no-defaults -S "$sock" -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  log "mariadbd started"
}

write_configs() {  # write_configs ACCOUNTING(0|1)
  local accounting=$1 node mem
  node=$(slurmd -C | head -1)
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
  mem=$((mem > 2048 ? mem - 1024 : mem / 2))  # leave the OS a margin
  node=$(sed "s/RealMemory=[0-9]*/RealMemory=$mem/" <<<"$node")
  local host
  host=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node")
  cat >"$CONF" <<EOF
# written by slurm/testcluster.sh
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
KillWait=5
MinJobAge=300
MaxArraySize=$MAX_ARRAY
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
EOF
  if ((accounting)); then
    cat >>"$CONF" <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$host
AccountingStoragePort=$((PORT + 2))
EOF
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
# written by slurm/testcluster.sh
AuthType=auth/munge
DbdHost=$host
DbdPort=$((PORT + 2))
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"
  else
    echo "AccountingStorageType=accounting_storage/none" >>"$CONF"
  fi
  cat >>"$CONF" <<EOF
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

stop_slurm_daemons() {
  export SLURM_CONF=$CONF
  if pid_alive "$DIR/run/slurmctld.pid"; then
    # let Slurm end its own jobs (their steps would outlive slurmd otherwise)
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [[ -n ${jobs// /} ]]; then
      scancel --full --quiet $jobs 2>/dev/null || true
      wait_for 30 "jobs to end" bash -c '[[ -z $(squeue -h 2>/dev/null) ]]' || log "some jobs did not end within 30 s"
    fi
  fi
  stop_pidfile "$DIR/run/slurmd.pid" slurmd
  stop_pidfile "$DIR/run/slurmctld.pid" slurmctld
  stop_pidfile "$DIR/run/slurmdbd.pid" slurmdbd
}

cmd_start() {
  local accounting=0
  for arg in "$@"; do
    case $arg in
      --accounting) accounting=1 ;;
      --no-accounting) accounting=0 ;;
      *) die "unknown option $arg (use --accounting)" ;;
    esac
  done
  [[ $(id -u) == 0 ]] || die "run as root (the daemons start by hand)"
  command -v slurmctld >/dev/null || die "Slurm is not installed: run 'bash slurm/testcluster.sh install'"
  mkdir -p "$DIR"/{etc,state,spool,log,run}
  stop_slurm_daemons
  rm -rf "${DIR:?}/state"/* "${DIR:?}/spool"/*
  start_munge
  write_configs "$accounting"
  export SLURM_CONF=$CONF
  if ((accounting)); then
    start_mariadb
    slurmdbd || die "slurmdbd failed (see $DIR/log/slurmdbd.log)"
    wait_for 30 slurmdbd sacctmgr -n list cluster || die "slurmdbd does not answer (see $DIR/log/slurmdbd.log)"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
  fi
  slurmctld -f "$CONF" || die "slurmctld failed (see $DIR/log/slurmctld.log)"
  wait_for 30 slurmctld scontrol ping || die "slurmctld does not answer (see $DIR/log/slurmctld.log)"
  slurmd -f "$CONF" || die "slurmd failed (see $DIR/log/slurmd.log)"
  if ! wait_for 30 "node to be idle" bash -c '[[ $(sinfo -h -o %t) == idle ]]'; then
    tail -5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    die "the node did not become idle: $(sinfo -h -o '%t %E' 2>&1)"
  fi
  log "Slurm $(slurmctld -V | awk '{print $2}') up ($( ((accounting)) && echo with || echo without) accounting): export SLURM_CONF=$CONF"
}

cmd_stop() {
  [[ -d $DIR ]] || return 0
  stop_slurm_daemons
  if pid_alive "$DIR/run/mariadbd.pid"; then
    stop_pidfile "$DIR/run/mariadbd.pid" mariadbd
  fi
  if [[ -f $DIR/run/munged.pid ]]; then
    munged --stop >/dev/null 2>&1 || stop_pidfile "$DIR/run/munged.pid" munged
    rm -f "$DIR/run/munged.pid"
    log "stopped munged"
  fi
  rm -rf "${DIR:?}/state" "${DIR:?}/spool" "${DIR:?}/mysql"
}

cmd_status() {
  local name
  for name in munged mariadbd slurmdbd slurmctld slurmd; do
    if pid_alive "$DIR/run/$name.pid"; then echo "$name: running ($(cat "$DIR/run/$name.pid"))"
    else echo "$name: stopped"; fi
  done
  if pid_alive "$DIR/run/slurmctld.pid"; then SLURM_CONF=$CONF sinfo; fi
}

case ${1:-} in
  install) cmd_install ;;
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 install | start [--accounting] | stop | status | env" >&2; exit 2 ;;
esac

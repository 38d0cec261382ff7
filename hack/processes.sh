# Local processes of cluster.sh and node.sh (sourced, not executed): start, recognise, stop
# and wait for them. The sourcing script sets PID_DIR, LOG_DIR and PROCESS_HOME (a directory
# that every command line of its processes points into) and defines `binary_of NAME`.
# shellcheck shell=bash

pid_of() { cat "$PID_DIR/$1.pid" 2>/dev/null || true; }

# True when $2 is alive and really is our $1: its executable is ours and its command line
# points into PROCESS_HOME (pids get reused).
is_ours() {
  local name="$1" pid="$2" cmdline
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  cmdline="$({ tr '\0' '\n' <"/proc/$pid/cmdline"; } 2>/dev/null)" || return 1
  [[ "$(head -n1 <<<"$cmdline")" == "$(binary_of "$name")" ]] || return 1
  grep -qF -- "$PROCESS_HOME/" <<<"$cmdline"
}

running() { is_ours "$1" "$(pid_of "$1")"; }

start_component() {
  local name="$1"
  shift
  # setsid: a Ctrl-C in the shell that ran `up` must not take the processes down.
  # 8>&-: they must not inherit (and so hold) the lock of `up`.
  setsid "$(binary_of "$name")" "$@" >"$LOG_DIR/$name.log" 2>&1 </dev/null 8>&- &
  local pid=$! i
  printf '%s\n' "$pid" >"$PID_DIR/$name.pid"
  # Until the fork has exec'd the binary, /proc shows the shell's command line: `running`
  # would call the component gone. Wait for the exec (or the process's end) here.
  for ((i = 0; i < 100; i++)); do
    is_ours "$name" "$pid" && return 0
    kill -0 "$pid" 2>/dev/null || return 0 # ended: the caller's wait reports it
    sleep 0.05
  done
}

stop_component() {
  local name="$1" pid i
  pid="$(pid_of "$name")"
  if is_ours "$name" "$pid"; then
    # The whole process group (socat forks a child per connection).
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      is_ours "$name" "$pid" || break
      sleep 0.1
    done
    if is_ours "$name" "$pid"; then
      log "$name ($pid) ignored SIGTERM for 15s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
    log "stopped $name ($pid)"
  elif [[ -n "$pid" ]]; then
    log "$name: pid $pid is not ours any more (already gone); not touching it"
  fi
  rm -f "$PID_DIR/$name.pid"
}

die_with_log() {
  local name="$1"
  shift
  log "ERROR: $*"
  if [[ -f "$LOG_DIR/$name.log" ]]; then
    log "last lines of $LOG_DIR/$name.log:"
    tail -n 40 "$LOG_DIR/$name.log" >&2
  fi
  exit 1
}

# wait_for NAME TIMEOUT_S DESCRIPTION CMD...: poll CMD until it succeeds while NAME lives.
wait_for() {
  local name="$1" timeout="$2" what="$3" deadline
  shift 3
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    running "$name" || die_with_log "$name" "$name exited while waiting for $what"
    ((SECONDS < deadline)) || die_with_log "$name" "timed out after ${timeout}s waiting for $what"
    sleep 0.2
  done
}

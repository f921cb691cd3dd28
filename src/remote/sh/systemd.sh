# systemd control for the target's services, as functions: service.rs emits one call per
# service, every argument quoted. SUDO and USER are 1 or 0: the unit is driven through
# `sudo -n` and/or `systemctl --user`, as the service is configured.
# needs: nothing set before it
# `systemctl --user` over SSH needs the user's runtime dir, which a non-login exec lacks.
XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/run/user/$(id -u)}; export XDG_RUNTIME_DIR

# bst_ctl SUDO USER TOOL ARGS...: systemctl or journalctl as configured.
bst_ctl() {
  bst_su=$1 bst_us=$2 bst_tool=$3; shift 3
  if [ "$bst_us" = 1 ]; then set -- --user "$@"; fi
  if [ "$bst_su" = 1 ]; then sudo -n "$bst_tool" "$@"; else "$bst_tool" "$@"; fi
}

# bst_status NAME UNIT SUDO USER: `S <name>`, systemctl's Key=Value lines, and `CWD <dir>`,
# the main process's working directory (which release is live).
bst_status() {
  printf 'S %s\n' "$1"
  if [ "$3" = 1 ] && ! command -v sudo >/dev/null 2>&1; then
    echo 'sudo is not installed on the server (the service is configured with sudo)'
    return 0
  fi
  bst_ctl "$3" "$4" systemctl show "$2" -p LoadState -p ActiveState -p SubState -p MainPID -p NRestarts -p ActiveEnterTimestamp -p Result 2>&1
  pid=$(bst_ctl "$3" "$4" systemctl show "$2" -p MainPID --value 2>/dev/null)
  if [ -n "$pid" ] && [ "$pid" != 0 ]; then
    if [ "$3" = 1 ]; then
      cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null || sudo -n readlink "/proc/$pid/cwd" 2>/dev/null)
    else
      cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null)
    fi
    printf 'CWD %s\n' "$cwd"
  fi
}

# bst_act ACTION NAME UNIT SUDO USER SECS: start/stop/restart, bounded by SECS (0: unbounded;
# a Type=notify unit that never says ready stays `activating` and is reported so). A failure
# prints `E <name> <systemctl's words>` and the unit's last journal lines, `J ` prefixed.
bst_act() {
  bst_action=$1 bst_name=$2 bst_unit=$3 bst_su=$4 bst_us=$5 bst_secs=$6
  set -- systemctl
  if [ "$bst_us" = 1 ]; then set -- "$@" --user; fi
  set -- "$@" "$bst_action" "$bst_unit"
  if [ "$bst_su" = 1 ]; then set -- sudo -n "$@"; fi
  if [ "$bst_secs" != 0 ]; then set -- timeout "$bst_secs" "$@"; fi
  if ! out=$("$@" 2>&1); then
    printf 'E %s %s\n' "$bst_name" "$(printf '%s' "$out" | tr '\n' ' ')"
    bst_journal "$bst_unit" "$bst_su" "$bst_us"
  fi
}

# bst_journal UNIT SUDO USER: the unit's last 20 journal lines, `J ` prefixed.
bst_journal() {
  bst_ctl "$2" "$3" journalctl -u "$1" -n 20 --no-pager 2>&1 | sed 's/^/J /'
}

# Checks shared by scripts/demo, scripts/demo-clean and .ci/run. Sourced (bash): defines functions only.

# require_root [ARGS...]: return if this is root; otherwise say how to re-run the calling script as
# root and exit 77 (EX_NOPERM), before the script has changed anything. No automatic sudo: sudo may
# ask for a password, and its env_reset would drop the PICICD_* settings a user exported.
require_root() {
  [ "$(id -u)" = 0 ] && return 0
  local command=$0 name
  name=$(basename "$0")
  [ $# -eq 0 ] || command="$command $*"
  {
    printf '%s: must run as root: it installs missing packages (apt-get) and may start the Docker Engine.\n' "$name"
    if command -v sudo >/dev/null 2>&1; then
      printf 'Re-run it as root:  sudo %s\n' "$command"
    else
      printf 'Re-run it as root (this machine has no sudo):  su root -c '\''%s'\''   or from a root shell:  %s\n' \
        "$command" "$command"
    fi
  } >&2
  exit 77
}

# docker_engine_present: true when the Docker Engine is installed (dockerd on PATH) or one answers
# (`docker info`, e.g. through DOCKER_HOST). The docker CLI alone is not an engine: a machine with
# only the CLI needs docker.io installed.
docker_engine_present() {
  command -v dockerd >/dev/null 2>&1 && return 0
  command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1
}

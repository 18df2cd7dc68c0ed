# take_lock NAME: hold an exclusive lock called NAME on file descriptor 9 until the script exits, so two
# callers of the same build (the demo and a test, .ci/run and a test) do not both build. Sourced (bash).
#
# The lock file lives in a folder only this user (and root) can write: /run/pi-cicd for root, else
# $XDG_RUNTIME_DIR/pi-cicd or ~/.cache/pi-cicd. Never a fixed name in a world-writable /tmp, where another
# user could plant a symbolic link there first, and root's `>` would follow it and empty the file it names.
take_lock() {
  local dir uid
  uid=$(id -u)
  if [ "$uid" = 0 ]; then dir=/run/pi-cicd; else dir=${XDG_RUNTIME_DIR:-${HOME:?}/.cache}/pi-cicd; fi
  mkdir -p -m 0700 -- "$dir"
  if [ -L "$dir" ] || [ ! -d "$dir" ] || [ "$(stat -c %u -- "$dir")" != "$uid" ]; then
    echo "$(basename "$0"): the lock folder $dir is not a folder of this user's (uid $uid); remove it and retry" >&2
    exit 1
  fi
  # >> creates the file if needed and never truncates it.
  exec 9>>"$dir/$1.lock"
  flock 9
}

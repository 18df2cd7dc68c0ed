# The demo's folder (PICICD_DEMO_DIR) as root uses it. Sourced (bash) by scripts/demo and
# scripts/demo-clean: defines functions only.
#
# Root starts programs from this folder, writes its settings there, removes it, and reads demo.vars from
# it, so no other user may be able to make it, swap it or write into it. The rules are sshd's for a
# user's authorized_keys path, with systemd-tmpfiles' allowance for sticky folders:
# - the folder itself is root's, a real directory (not a symbolic link), writable by no one else;
# - every folder above it is root's and writable by no one else, or sticky (/tmp, /var/tmp: others may
#   add entries there but not rename or remove root's); a symbolic link on the way must be root's.
# demo.vars is read as data: KEY=value lines with known keys and values of a strict shape, never sourced.

# _demo_owner UID: "name (uid N)" for messages.
_demo_owner() {
  local name
  name=$(getent passwd "$1" 2>/dev/null | cut -d: -f1) || true
  if [ -n "$name" ]; then printf '%s (uid %s)' "$name" "$1"; else printf 'uid %s' "$1"; fi
}

# demo_dir_problem DIR: print what makes DIR unsafe for root's demo (one line starting with the path at
# fault), or nothing when it is safe. What does not exist yet is safe once what exists of its path is:
# root creates the rest. Symbolic links on the way are followed (when root's) and checked where they lead.
demo_dir_problem() {
  local path=$1 rest current="" part next uid mode kind target hops=0
  case $path in
    /*) ;;
    *) printf 'PICICD_DEMO_DIR=%q is not an absolute path\n' "$path"; return 0 ;;
  esac
  if [[ ! $path =~ ^[A-Za-z0-9._+@,:~/-]+$ ]]; then
    printf 'PICICD_DEMO_DIR=%q has characters other than letters, digits and ._+@,:~/-\n' "$path"; return 0
  fi
  rest=${path#/}
  rest=${rest%/}
  [ -n "$rest" ] || { echo "PICICD_DEMO_DIR=/ is the whole file system"; return 0; }
  read -r uid mode < <(stat -c '%u %a' /)
  if [ "$uid" != 0 ] || (( (8#$mode & 8#022) && !(8#$mode & 8#1000) )); then
    printf '/ is owned by %s with mode %04o\n' "$(_demo_owner "$uid")" "$((8#$mode))"; return 0
  fi
  while [ -n "$rest" ]; do
    part=${rest%%/*}
    if [ "$part" = "$rest" ]; then rest=""; else rest=${rest#*/}; fi
    case $part in
      "" | .) continue ;;
      ..) current=${current%/*}; continue ;;  # `current` is a real path (links resolved): its parent
    esac
    next=$current/$part
    [ -e "$next" ] || [ -L "$next" ] || return 0
    read -r uid mode kind < <(stat -c '%u %a %F' -- "$next")
    if [ "$kind" = "symbolic link" ]; then
      if [ -z "$rest" ]; then
        echo "$next is a symbolic link (to $(readlink -- "$next")), not a folder"; return 0
      fi
      if [ "$uid" != 0 ]; then
        echo "$next is a symbolic link owned by $(_demo_owner "$uid")"; return 0
      fi
      hops=$((hops + 1))
      [ $hops -le 40 ] || { echo "$path has too many symbolic links"; return 0; }
      target=$(readlink -- "$next")
      case $target in /*) ;; *) target=$current/$target ;; esac
      # Start again from the link's target, with what was left of the path after it.
      rest=${target#/}${rest:+/$rest}
      current=""
      continue
    fi
    if [ "$kind" != directory ]; then echo "$next is not a folder (it is a $kind)"; return 0; fi
    if [ "$uid" != 0 ]; then echo "$next is owned by $(_demo_owner "$uid"), not root"; return 0; fi
    if [ -z "$rest" ]; then
      if (( 8#$mode & 8#022 )); then
        printf '%s is writable by other users (mode %04o)\n' "$next" "$((8#$mode))"; return 0
      fi
    elif (( (8#$mode & 8#022) && !(8#$mode & 8#1000) )); then
      printf '%s is writable by other users without the sticky bit (mode %04o)\n' "$next" "$((8#$mode))"
      return 0
    fi
    current=$next
  done
}

# demo_entry_problem PATH: print what is wrong with PATH, a file or folder inside the demo's folder that
# root reads (demo.vars, pids/), or nothing: it must be root's, not a symbolic link, writable by no one else.
demo_entry_problem() {
  local uid mode kind
  [ -e "$1" ] || [ -L "$1" ] || return 0
  read -r uid mode kind < <(stat -c '%u %a %F' -- "$1")
  if [ "$kind" = "symbolic link" ]; then echo "$1 is a symbolic link"
  elif [ "$uid" != 0 ]; then echo "$1 is owned by $(_demo_owner "$uid"), not root"
  elif (( 8#$mode & 8#022 )); then printf '%s is writable by other users (mode %04o)\n' "$1" "$((8#$mode))"
  fi
}

# demo_dir_refuse SCRIPT DIR PROBLEM: say why SCRIPT will not use DIR and how to go on; exit 1.
demo_dir_refuse() {
  local script=$1 dir=$2 problem=$3
  {
    printf '%s: refusing the demo folder %s: %s.\n' "$script" "$dir" "$problem"
    echo "  Root runs programs from this folder and removes it, so no other user may be able to create, swap or change it."
    case $problem in
      "$dir "* | "$dir/"*)
        echo "  Another user may have prepared it for root to run their files: look at what is in it, then remove it:"
        echo "    rm -rf $dir"
        echo "  (the demo makes it again, root's, mode 0700), or set PICICD_DEMO_DIR to another folder."
        ;;
      *)
        echo "  Set PICICD_DEMO_DIR to a folder whose parent folders are root's and writable by no one else"
        echo "  (or sticky, as /var/tmp is): the default /var/tmp/pi-cicd-demo, or /root/pi-cicd-demo."
        ;;
    esac
  } >&2
  exit 1
}

# demo_dir_create DIR: make DIR, root's, mode 0700; it must not exist (another user may have made it since
# it was checked: then mkdir fails and nothing is written into it). Missing parents are made 0700 too.
demo_dir_create() {
  local dir=${1%/} problem
  mkdir -p -m 0700 -- "$(dirname -- "$dir")"
  mkdir -m 0700 -- "$dir" || { echo "$dir exists already (made since it was checked?)"; return 0; }
  # A parent made by someone else between the check and the mkdir above shows here.
  problem=$(demo_dir_problem "$dir")
  [ -z "$problem" ] || { echo "$problem"; return 0; }
}

# read_demo_vars FILE: set IMAGE, CONTAINER, BG_CONTAINER, APP_URL, CI_URL, CI_DASHBOARD_URL and BG_URL
# from FILE's KEY=value lines (as scripts/demo writes them). Anything else is refused: returns 1 with
# DEMO_VARS_PROBLEM set to "FILE line N: what is wrong". Blank lines and # comments are skipped.
read_demo_vars() {
  local file=$1 line key value pattern shape number=0
  DEMO_VARS_PROBLEM=
  while IFS= read -r line || [ -n "$line" ]; do
    number=$((number + 1))
    case $line in "" | "#"*) continue ;; esac
    if [[ ! $line =~ ^[A-Z_]+= ]]; then
      printf -v DEMO_VARS_PROBLEM '%s line %d is not KEY=value: %q' "$file" "$number" "$line"; return 1
    fi
    key=${line%%=*}
    value=${line#*=}
    case $key in
      IMAGE)
        pattern='^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)+$'
        shape="an image name like 127.0.0.1:5000/demo/flask-app" ;;
      CONTAINER | BG_CONTAINER)
        pattern='^[A-Za-z0-9][A-Za-z0-9_.-]*$'
        shape="a container name (letters, digits and _.-)" ;;
      APP_URL | CI_URL | CI_DASHBOARD_URL | BG_URL)
        pattern='^http://127\.0\.0\.1:[0-9]{1,5}$'
        shape="a URL like http://127.0.0.1:8080" ;;
      *)
        printf -v DEMO_VARS_PROBLEM '%s line %d: unknown key %s (known: %s)' "$file" "$number" "$key" \
          "IMAGE CONTAINER BG_CONTAINER APP_URL CI_URL CI_DASHBOARD_URL BG_URL"
        return 1 ;;
    esac
    if [[ ! $value =~ $pattern ]]; then
      printf -v DEMO_VARS_PROBLEM '%s line %d: %s=%q is not %s' "$file" "$number" "$key" "$value" "$shape"
      return 1
    fi
    printf -v "$key" '%s' "$value"
  done <"$file"
}

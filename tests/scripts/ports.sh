# Loopback ports for the servers the scripts start; sourced, not run.
#
#   free_port VAR    sets VAR to a port nothing listens on, never the same one twice in a
#                    script (not `$(free_port)`: a subshell would forget what it handed out)
#   wait_port PORT   returns once something accepts on 127.0.0.1:PORT (20 s at most)
#
# Ports come from 20000-31999, below the kernel's ephemeral range (32768+ by default),
# where outgoing connections take local ports that a listening check cannot see.
# Failures go through the script's own `die` when it has one.

taken_ports=" "

ports_fail() {
  if declare -F die >/dev/null; then die "$*"; fi
  echo "$*" >&2
  exit 1
}

free_port() {
  local candidate
  for _ in $(seq 1 200); do
    candidate=$((20000 + RANDOM % 12000))
    [[ "$taken_ports" == *" $candidate "* ]] && continue
    if ! (: <"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
      taken_ports+="$candidate "
      printf -v "$1" "%s" "$candidate"
      return
    fi
  done
  ports_fail "no free loopback port found"
}

wait_port() {
  for _ in $(seq 400); do
    (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  ports_fail "nothing listens on 127.0.0.1:$1 after 20 s"
}

#!/usr/bin/env bash
# Shoal demo: a three-node swarm on one machine, running a replicated HTTP service on an overlay
# network that answers on published port 8080 of every node (the routing mesh), and a client
# that reaches it by name through its virtual IP.
#
# Each node is a separate shoald in its own network namespace (10.252.0.1-3), wired to one
# bridge, exactly like three hosts on a LAN:
#
#   bash deploy/demo.sh          build, (re)create the demo, print how to use it
#   bash deploy/demo.sh down     stop the daemons and remove everything the demo made
#
# Needs root on Debian 12 (or similar) with cargo installed. Running it again tears the old
# demo down first.
set -euo pipefail

# --- Settings ------------------------------------------------------------------------------------
NODES=(n1 n2 n3)
SUBNET=10.252.0               # node nX gets $SUBNET.X/24
PORT=4242                     # cluster port of the manager
BRIDGE=shoaldemo0             # interface names are at most 15 characters
NS_PREFIX=shoal-demo-         # namespaces shoal-demo-n1 ...
VETH_PREFIX=sdemo             # host ends sdemo1 ...; the namespace end is renamed eth0
STATE=/var/lib/shoal-demo     # data roots: $STATE/nX (each holds its shoald.log)
RUN=/run/shoal-demo           # sockets and pid files: $RUN/nX.sock, $RUN/nX.pid
READY_TIMEOUT=60              # seconds to wait for all nodes to be Ready

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHOAL="$REPO/target/release/shoal"
SHOALD="$REPO/target/release/shoald"

say() { printf '==> %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

ip_of() { echo "$SUBNET.${1#n}"; }                       # n2 -> 10.252.0.2
ns_of() { echo "$NS_PREFIX$1"; }                         # n2 -> shoal-demo-n2
veth_of() { echo "$VETH_PREFIX${1#n}"; }                 # n2 -> sdemo2
sock_of() { echo "$RUN/$1.sock"; }
shoal_on() { local node=$1; shift; "$SHOAL" -H "unix://$(sock_of "$node")" "$@"; }

# --- Teardown --------------------------------------------------------------------------------------
# Safe to run at any time: every step ignores what is already gone.
down() {
    say "Stopping the demo (if any)"
    local node ns pid
    # Ask each daemon to stop, by the pid the demo recorded (only if it is still a shoald).
    for node in "${NODES[@]}"; do
        pid=$(cat "$RUN/$node.pid" 2>/dev/null || true)
        if [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == shoald ]]; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    # Give them a few seconds, then kill whatever still runs inside the demo's namespaces.
    for _ in $(seq 50); do
        local left=0
        for node in "${NODES[@]}"; do
            ns=$(ns_of "$node")
            if [[ -e "/run/netns/$ns" && -n "$(ip netns pids "$ns" 2>/dev/null)" ]]; then
                left=1
            fi
        done
        if [[ $left == 0 ]]; then break; fi
        sleep 0.1
    done
    for node in "${NODES[@]}"; do
        ns=$(ns_of "$node")
        if [[ -e "/run/netns/$ns" ]]; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
            ip netns del "$ns" 2>/dev/null || true
        fi
        ip link del "$(veth_of "$node")" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    if command -v iptables >/dev/null; then
        while iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null; do :; done
    fi
    # Containers outlive their daemon (an agent restart re-attaches to them): remove them, and
    # any rootfs mount they left, before deleting the state.
    if [[ -d "$STATE" ]]; then
        local root id mnt tag netns
        while read -r root; do
            for id in $(runc --root "$root" list -q 2>/dev/null); do
                runc --root "$root" delete --force "$id" 2>/dev/null || true
            done
        done < <(find "$STATE" -maxdepth 4 -type d -name runc 2>/dev/null)
        while read -r mnt; do
            umount -l "$mnt" 2>/dev/null || true
        done < <(awk -v s="$STATE" 'index($5, s) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
        # Each node's data plane names its task and overlay namespaces after its tag (a file
        # without a trailing newline, so read whole rather than by line).
        local file
        for file in "$STATE"/*/net/tag; do
            [[ -f "$file" ]] || continue
            tag=$(<"$file")
            [[ -n "$tag" ]] || continue
            for netns in /run/netns/shoal-"$tag"-*; do
                [[ -e "$netns" ]] && ip netns del "$(basename "$netns")" 2>/dev/null || true
            done
        done
    fi
    rm -rf "$STATE" "$RUN"
}

# --- Setup ---------------------------------------------------------------------------------------
install_tools() {
    if command -v ip >/dev/null && command -v iptables >/dev/null && command -v nsenter >/dev/null \
        && command -v runc >/dev/null && [[ -x /bin/busybox ]]; then
        return
    fi
    say "Installing iproute2, iptables, runc and busybox-static"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq iproute2 iptables util-linux runc busybox-static >/dev/null
}

build() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        # Shoal needs Rust 1.88 or later; Debian 12's own cargo is older, so use rustup.
        say "Installing the Rust toolchain with rustup (cargo not found)"
        apt-get install -y -qq curl ca-certificates build-essential >/dev/null
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    say "Building Shoal (cargo build --release)"
    (cd "$REPO" && cargo build --release)
}

make_network() {
    say "Creating bridge $BRIDGE and namespaces for ${NODES[*]} on $SUBNET.0/24"
    ip link add "$BRIDGE" type bridge
    ip link set "$BRIDGE" up
    # This machine's own address on the demo LAN, to reach the published port from here.
    ip addr add "$SUBNET.254/24" dev "$BRIDGE"
    # Where Docker is installed the FORWARD policy is DROP, and bridged traffic passes FORWARD.
    if command -v iptables >/dev/null; then
        iptables -I FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
    fi
    local node ns veth
    for node in "${NODES[@]}"; do
        ns=$(ns_of "$node")
        veth=$(veth_of "$node")
        ip netns add "$ns"
        ip link add "$veth" type veth peer name "${veth}p"
        ip link set "${veth}p" netns "$ns"
        ip link set "$veth" master "$BRIDGE" up
        ip -n "$ns" link set "${veth}p" name eth0
        ip -n "$ns" addr add "$(ip_of "$node")/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
}

start_daemons() {
    say "Starting shoald in each namespace"
    mkdir -p "$RUN"
    local node data
    for node in "${NODES[@]}"; do
        data="$STATE/$node"
        mkdir -p "$data"
        # nsenter, not 'ip netns exec': the latter remounts /sys and hides /sys/fs/cgroup.
        setsid nsenter --net="/run/netns/$(ns_of "$node")" \
            "$SHOALD" --data-root "$data" -H "unix://$(sock_of "$node")" --hostname "$node" \
            </dev/null >>"$data/shoald.log" 2>&1 &
        echo $! >"$RUN/$node.pid"
    done
    for node in "${NODES[@]}"; do
        wait_for "shoald on $node to answer" 20 shoal_on "$node" info
    done
}

# wait_for DESCRIPTION SECONDS COMMAND...: runs COMMAND every half second until it succeeds.
wait_for() {
    local what=$1 timeout=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            "$@" || true
            die "timed out after ${timeout}s waiting for $what (logs: $STATE/*/shoald.log)"
        fi
        sleep 0.5
    done
}

# all_ready: node ls on n1 lists every demo node, each Ready.
all_ready() {
    local table
    table=$(shoal_on n1 node ls) || return 1
    [[ $(tail -n +2 <<<"$table" | grep -c ' Ready ') == "${#NODES[@]}" ]]
}

form_swarm() {
    local manager_ip token node
    manager_ip=$(ip_of n1)
    say "Initializing the swarm on n1 ($manager_ip:$PORT)"
    shoal_on n1 swarm init --advertise-addr "$manager_ip" --listen-addr "$manager_ip:$PORT" >/dev/null
    token=$(shoal_on n1 swarm join-token -q worker)
    for node in "${NODES[@]:1}"; do
        say "Joining $node as a worker"
        shoal_on "$node" swarm join --token "$token" --advertise-addr "$(ip_of "$node")" \
            "$manager_ip:$PORT"
    done
    say "Waiting for all ${#NODES[@]} nodes to be Ready"
    wait_for "all nodes to be Ready" "$READY_TIMEOUT" all_ready
}

# A busybox image built from local files (no registry is needed), loaded on every node, and a
# replicated service of three tasks spread over the three nodes.
deploy_service() {
    local rootfs="$STATE/rootfs" node
    say "Building a busybox image from /bin/busybox and importing it on every node"
    mkdir -p "$rootfs/bin"
    cp /bin/busybox "$rootfs/bin/busybox"
    tar -C "$rootfs" -cf "$STATE/busybox.tar" .
    for applet in sh httpd wget hostname mkdir sleep echo date timeout; do
        ln -sf busybox "$rootfs/bin/$applet"
    done
    tar -C "$rootfs" -cf "$STATE/busybox.tar" .
    for node in "${NODES[@]}"; do
        shoal_on "$node" image import "$STATE/busybox.tar" busybox:demo >/dev/null
    done
    say "Creating overlay network 'demo'"
    shoal_on n1 network create -d overlay demo >/dev/null
    say "Creating service 'web': 3 replicas of an HTTP server on network demo, published on 8080"
    shoal_on n1 service create --name web --replicas 3 --network demo --publish 8080:80 busybox:demo \
        sh -c 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 80 -h /www'
    say "Creating service 'client': fetches http://web/ by name every 2 seconds"
    shoal_on n1 service create --name client --network demo busybox:demo \
        sh -c 'while true; do echo "$(date +%T) $(timeout 2 wget -q -O - http://web/)"; sleep 2; done'
    say "Waiting for the client's first answers"
    wait_for "the client to reach web" 60 client_answered
    say "Waiting for port 8080 to answer on every node"
    for node in "${NODES[@]}"; do
        wait_for "http://$(ip_of "$node"):8080/" 30 published_answers "$(ip_of "$node")"
    done
}

# published_answers IP: web answers on IP:8080, from this machine (outside the swarm).
published_answers() {
    timeout 3 busybox wget -q -O - "http://$1:8080/" 2>/dev/null | grep -q "hello from"
}

# client_answered: the client's log holds an answer from web.
client_answered() {
    shoal_on n1 service logs client 2>/dev/null | grep -q "hello from"
}

usage_notes() {
    echo
    shoal_on n1 node ls
    echo
    shoal_on n1 service ls
    echo
    shoal_on n1 service ps web
    echo
    shoal_on n1 service logs --tail 3 client
    echo
    for node in "${NODES[@]}"; do
        echo "http://$(ip_of "$node"):8080/ -> $(timeout 3 busybox wget -q -O - "http://$(ip_of "$node"):8080/")"
    done
    cat <<EOF

The demo swarm is running: ${NODES[*]} on $SUBNET.0/24, manager n1 at $(ip_of n1):$PORT.

Drive it from the manager's socket:
    export SHOAL_HOST=unix://$(sock_of n1)
    target/release/shoal node ls
    target/release/shoal service ps web
    target/release/shoal service logs -f client      # answers spread over web's replicas
    busybox wget -q -O - http://$(ip_of n1):8080/     # the published port, on any node
    target/release/shoal network inspect demo
    target/release/shoal service scale web=6
    target/release/shoal node update --availability drain n2

Each node has its own socket ($RUN/nX.sock) and log ($STATE/nX/shoald.log).

Stop it and remove everything it made (daemons, namespaces, bridge, iptables rule, state):
    bash deploy/demo.sh down
EOF
}

# --- Main ----------------------------------------------------------------------------------------
[[ $(id -u) == 0 ]] || die "run me as root (network namespaces need it): sudo bash deploy/demo.sh"

case "${1:-up}" in
    up)
        install_tools
        build
        down
        make_network
        start_daemons
        form_swarm
        deploy_service
        usage_notes
        ;;
    down)
        down
        say "Demo removed"
        ;;
    *)
        die "usage: bash deploy/demo.sh [up|down]"
        ;;
esac

#!/usr/bin/env bash
# A throwaway single-node Kubernetes for the Kubernetes runtime's tests, on this kind of
# machine (no registry, no packaged Kubernetes server): see ../../docs/kubernetes.md.
#
#   tests/k8s/cluster.sh build   # kube-apiserver, kubelet, kube-scheduler, kube-controller-manager
#                                # and kubectl from Debian's source package `kubernetes` (1.20),
#                                # cached in $INSIEN_K8S_CACHE (~/.cache/insien-k8s); ~8 min once
#   tests/k8s/cluster.sh up      # etcd, the control plane and a kubelet (dockershim) against a
#                                # private dockerd, all in the network namespace insien-k8s
#   tests/k8s/cluster.sh down    # stops everything, restores the host's sysctls, removes the lot
#   tests/k8s/cluster.sh env     # KUBECONFIG=... for a shell (run it inside the namespace:
#                                # nsenter --net=/run/netns/insien-k8s ...)
#
# Everything listens inside the namespace on its loopback (the API server on 127.0.0.1:6443),
# so tests run there too and talk to 127.0.0.1 only; the node's address is a veth pair's end.
set -euo pipefail

CACHE=${INSIEN_K8S_CACHE:-$HOME/.cache/insien-k8s}
RUN=${INSIEN_K8S_RUN:-/tmp/insien-k8s}
NETNS=insien-k8s
HOST_IF=ik8s0
NODE_IF=ik8s1
HOST_IP=10.213.0.1
NODE_IP=10.213.0.2
NODE_NAME=insien-node
BIN=$CACHE/bin
COMPONENTS="kube-apiserver kubelet kube-scheduler kube-controller-manager kubectl"
SYSCTLS="vm.overcommit_memory kernel.panic kernel.panic_on_oops"
PAUSE_IMAGE=k8s.gcr.io/pause:3.2

log() { printf '==> %s\n' "$*" >&2; }
in_ns() { nsenter --net="/run/netns/$NETNS" "$@"; }

build() {
    local missing=""
    for component in $COMPONENTS; do [ -x "$BIN/$component" ] || missing=1; done
    [ -z "$missing" ] && return
    command -v go >/dev/null && command -v etcd >/dev/null && command -v rsync >/dev/null \
        && command -v dpkg-source >/dev/null || {
        log "installing golang-go, etcd-server, rsync and dpkg-dev (Debian's)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go etcd-server rsync dpkg-dev >/dev/null
    }
    local src=$CACHE/src
    if [ ! -d "$src/k8s" ]; then
        log "fetching Debian's source package kubernetes"
        mkdir -p "$CACHE/apt/lists/partial" "$src"
        echo "deb-src http://deb.debian.org/debian bookworm main" > "$CACHE/apt/sources.list"
        local apt=(-o "Dir::Etc::sourcelist=$CACHE/apt/sources.list" -o "Dir::Etc::sourceparts=-"
                   -o "Dir::State::Lists=$CACHE/apt/lists")
        apt-get "${apt[@]}" update -qq
        (cd "$src" && apt-get "${apt[@]}" source --download-only kubernetes >/dev/null 2>&1 \
            && dpkg-source -x kubernetes_*.dsc k8s >/dev/null)
    fi
    log "building $COMPONENTS (Go $(go env GOVERSION)); several minutes on 2 cores"
    local what=""
    for component in $COMPONENTS; do what="$what cmd/$component"; done
    (cd "$src/k8s" && GOPATH=$CACHE/.go GOCACHE=$CACHE/.gocache CGO_ENABLED=0 \
        make WHAT="${what# }" >"$CACHE/build.log" 2>&1) || {
        tail -30 "$CACHE/build.log" >&2
        exit 1
    }
    mkdir -p "$BIN"
    for component in $COMPONENTS; do
        cp "$src/k8s/_output/local/bin/linux/$(go env GOARCH)/$component" "$BIN/"
    done
    log "built into $BIN"
}

kubeconfig() {  # name token
    cat > "$RUN/$1.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: insien
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$RUN/pki/ca.crt"}
users:
- name: $1
  user: {token: "$2"}
contexts:
- name: $1
  context: {cluster: insien, user: $1, namespace: default}
current-context: $1
KUBECONFIG
}

certificates() {
    local pki=$RUN/pki
    mkdir -p "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 7 \
        -subj /CN=insien-k8s-ca 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" \
        -subj /CN=kube-apiserver 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:10.214.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' \
        "$NODE_IP" > "$pki/san.ext"
    openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAcreateserial -out "$pki/apiserver.crt" -days 7 -extfile "$pki/san.ext" 2>/dev/null
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    local admin kubelet manager scheduler
    admin=$(openssl rand -hex 16); kubelet=$(openssl rand -hex 16)
    manager=$(openssl rand -hex 16); scheduler=$(openssl rand -hex 16)
    cat > "$pki/tokens.csv" <<TOKENS
$admin,admin,admin,"system:masters"
$kubelet,system:node:$NODE_NAME,kubelet,"system:nodes"
$manager,system:kube-controller-manager,manager,"system:masters"
$scheduler,system:kube-scheduler,scheduler
TOKENS
    chmod 600 "$pki"/*.key "$pki/tokens.csv"
    kubeconfig admin "$admin"
    printf '{"server": "https://127.0.0.1:6443", "ca": "%s", "token": "%s"}\n' \
        "$pki/ca.crt" "$admin" > "$RUN/admin.json"
    chmod 600 "$RUN/admin.json" "$RUN"/*.kubeconfig
    kubeconfig kubelet "$kubelet"
    kubeconfig manager "$manager"
    kubeconfig scheduler "$scheduler"
}

runc_wrapper() {
    # runc on this VM fails on any negative oom_score_adj, which dockershim gives pause
    # containers: zero it in the bundle before runc reads it.
    cat > "$RUN/runc-wrapper" <<'WRAPPER'
#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
if "--bundle" in args:
    config = os.path.join(args[args.index("--bundle") + 1], "config.json")
    with open(config) as f:
        spec = json.load(f)
    process = spec.get("process") or {}
    if process.get("oomScoreAdj", 0) < 0:
        process["oomScoreAdj"] = 0
        with open(config, "w") as f:
            json.dump(spec, f)
os.execv("/usr/sbin/runc", ["runc", *args])
WRAPPER
    chmod +x "$RUN/runc-wrapper"
}

wait_for() {  # seconds description command...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq 1 $((seconds * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    log "$what did not come up; its log:"
    tail -20 "$RUN/logs/$what.log" >&2 || true
    return 1
}

start() {  # name command...: a daemon in the namespace, its log in $RUN/logs
    local name=$1
    shift
    # nsenter execs the daemon: the pid recorded is the daemon's own.
    nsenter --net="/run/netns/$NETNS" "$@" >"$RUN/logs/$name.log" 2>&1 &
    echo $! > "$RUN/pids/$name"
}

up() {
    build
    [ -e "/run/netns/$NETNS" ] && down
    mkdir -p "$RUN/logs" "$RUN/pids"
    for key in $SYSCTLS; do echo "$key=$(sysctl -n "$key")"; done > "$RUN/sysctls"
    log "network namespace $NETNS ($NODE_IP)"
    ip netns add "$NETNS"
    ip link add "$HOST_IF" type veth peer name "$NODE_IF"
    ip link set "$NODE_IF" netns "$NETNS"
    ip addr add "$HOST_IP/24" dev "$HOST_IF"
    ip link set "$HOST_IF" up
    in_ns ip addr add "$NODE_IP/24" dev "$NODE_IF"
    in_ns ip link set "$NODE_IF" up
    in_ns ip link set lo up
    in_ns ip route add default via "$HOST_IP"
    certificates
    runc_wrapper
    log "private dockerd"
    start dockerd dockerd --data-root "$RUN/docker" --exec-root "$RUN/docker-exec" \
        --pidfile "$RUN/docker.pid" -H "unix://$RUN/docker.sock" --bridge=none \
        --iptables=false --ip-masq=false --add-runtime "insien-runc=$RUN/runc-wrapper" \
        --default-runtime=insien-runc
    wait_for 60 dockerd docker -H "unix://$RUN/docker.sock" info
    log "etcd"
    start etcd etcd --name insien --data-dir "$RUN/etcd" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster insien=http://127.0.0.1:2380
    log "kube-apiserver"
    start kube-apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
        --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$NODE_IP" \
        --tls-cert-file="$RUN/pki/apiserver.crt" --tls-private-key-file="$RUN/pki/apiserver.key" \
        --client-ca-file="$RUN/pki/ca.crt" --token-auth-file="$RUN/pki/tokens.csv" \
        --authorization-mode=Node,RBAC --service-cluster-ip-range=10.214.0.0/24 \
        --service-account-key-file="$RUN/pki/sa.pub" \
        --service-account-signing-key-file="$RUN/pki/sa.key" \
        --service-account-issuer=https://kubernetes.default.svc \
        --kubelet-preferred-address-types=InternalIP
    wait_for 60 kube-apiserver in_ns "$BIN/kubectl" --kubeconfig "$RUN/admin.kubeconfig" get --raw /readyz
    log "kube-controller-manager, kube-scheduler"
    start kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig="$RUN/manager.kubeconfig" --leader-elect=false \
        --service-account-private-key-file="$RUN/pki/sa.key" --root-ca-file="$RUN/pki/ca.crt" \
        --bind-address=127.0.0.1 --port=0 --controllers='*,-nodeipam,-cloud-node-lifecycle'
    start kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$RUN/scheduler.kubeconfig" \
        --leader-elect=false --bind-address=127.0.0.1 --port=0
    log "images for the private dockerd"
    local private=(docker -H "unix://$RUN/docker.sock")
    for image in ${INSIEN_K8S_IMAGES:-insien-sandbox:latest}; do
        docker save "$image" | "${private[@]}" load -q >/dev/null
    done
    # The pod sandbox ("pause") container: anything that sleeps until told to stop.
    printf 'FROM insien-sandbox:latest\nCMD ["python3", "-c", "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); signal.pause()"]\n' \
        | "${private[@]}" build -q -t "$PAUSE_IMAGE" - >/dev/null
    log "kubelet ($NODE_NAME)"
    mkdir -p "$RUN/kubelet" "$RUN/kubelet-pki" "$RUN/volume-plugins"
    start kubelet "$BIN/kubelet" --kubeconfig="$RUN/kubelet.kubeconfig" \
        --container-runtime=docker --docker-endpoint="unix://$RUN/docker.sock" \
        --pod-infra-container-image="$PAUSE_IMAGE" --node-ip="$NODE_IP" \
        --hostname-override="$NODE_NAME" --root-dir="$RUN/kubelet" --cert-dir="$RUN/kubelet-pki" \
        --volume-plugin-dir="$RUN/volume-plugins" --address="$NODE_IP" --read-only-port=0 \
        --anonymous-auth=true --authorization-mode=AlwaysAllow --fail-swap-on=false \
        --cgroup-driver=cgroupfs --cgroups-per-qos=false --enforce-node-allocatable= \
        --make-iptables-util-chains=false --image-gc-high-threshold=100 \
        --image-gc-low-threshold=99 \
        --eviction-hard='memory.available<100Mi,nodefs.available<1%,imagefs.available<1%'
    wait_for 120 kubelet in_ns sh -c "'$BIN/kubectl' --kubeconfig '$RUN/admin.kubeconfig' get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True"
    log "ready: KUBECONFIG=$RUN/admin.kubeconfig, inside: nsenter --net=/run/netns/$NETNS"
}

down() {
    for name in kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
        [ -f "$RUN/pids/$name" ] && kill "$(cat "$RUN/pids/$name")" 2>/dev/null || true
    done
    # Anything of ours a pid file missed (a bring-up that failed half way).
    pkill -f "$BIN/kube" 2>/dev/null || true
    pkill -f "etcd --name insien --data-dir $RUN" 2>/dev/null || true
    sleep 1
    if [ -S "$RUN/docker.sock" ]; then
        local left
        left=$(docker -H "unix://$RUN/docker.sock" ps -aq 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -n "$left" ] && docker -H "unix://$RUN/docker.sock" rm -f $left >/dev/null 2>&1 || true
    fi
    [ -f "$RUN/pids/dockerd" ] && kill "$(cat "$RUN/pids/dockerd")" 2>/dev/null || true
    pkill -f "dockerd --data-root $RUN/docker" 2>/dev/null || true
    for _ in $(seq 1 100); do pgrep -f "dockerd --data-root $RUN/docker" >/dev/null || break; sleep 0.2; done
    pkill -9 -f "$RUN/" 2>/dev/null || true
    # What the kubelet mounted (its pods' volumes), innermost first.
    grep -o " $RUN/[^ ]*" /proc/mounts 2>/dev/null | sort -r | while read -r mount; do
        umount -l "$mount" 2>/dev/null || true
    done
    if [ -f "$RUN/sysctls" ]; then
        while IFS='=' read -r key value; do sysctl -qw "$key=$value" || true; done < "$RUN/sysctls"
    fi
    ip link del "$HOST_IF" 2>/dev/null || true
    ip netns del "$NETNS" 2>/dev/null || true
    rm -rf "$RUN"
}

case "${1:-}" in
    build) build ;;
    up) up ;;
    down) down ;;
    env) echo "export KUBECONFIG=$RUN/admin.kubeconfig" ;;
    *) echo "usage: $0 build|up|down|env" >&2; exit 2 ;;
esac

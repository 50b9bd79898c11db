#!/usr/bin/env bash
# A single-node Kubernetes cluster for lapseguard, built and run offline on this machine.
#
#   scripts/cluster.sh up        # build (cached) and start; waits for the node and system pods
#   scripts/cluster.sh status    # node, pods, processes
#   scripts/cluster.sh kubectl … # kubectl against the cluster (or: export KUBECONFIG=…, printed by up)
#   scripts/cluster.sh import localhost/lapseguard/backend:0.1.0 …   # podman/buildah image → cluster
#   scripts/cluster.sh down      # stop everything, remove state: the machine is left as it was
#
# What it is: upstream Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kube-proxy) built from the Go module proxy (k8s.io/kubernetes, its staging
# modules replaced by their published versions), etcd, containerd, runc and the CNI plugins
# from Debian, CoreDNS built from the Go module proxy (a trimmed plugin set), a pause image
# compiled from Kubernetes' pause.c, and static local PersistentVolumes behind a default
# StorageClass. (Not k3s: `go mod download github.com/k3s-io/k3s@v1.33.1+k3s1` drops the
# build metadata and the module proxy here answers 403 "This module version is not
# available"; k8s.io/kubernetes, CoreDNS and their dependencies are served.)
#
# Everything runs in a network namespace of its own ($NETNS, 10.231.0.2, reachable from
# the host through a veth) and a mount namespace of its own (shared propagation, slave to
# the host), so pod mounts, iptables rules and interfaces never touch the host; data under
# $DATA, sockets under $RUN, kubepods cgroups under /sys/fs/cgroup/*/kubepods.
#
# Builds are cached by version under ~/.cache/lapseguard/{k8s,coredns,pause,images}.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
COREDNS_VERSION=${COREDNS_VERSION:-v1.12.1}
PAUSE_VERSION=3.10
CACHE=${LAPSEGUARD_CACHE_DIR:-${LAPSEGUARD_CACHE:-$HOME/.cache/lapseguard}}
NETNS=${LAPSEGUARD_NETNS:-lapseguard}
NODE=lapseguard-node
HOST_IP=10.231.0.1
NODE_IP=10.231.0.2
POD_CIDR=10.42.0.0/24
CLUSTER_CIDR=10.42.0.0/16
SERVICE_CIDR=10.43.0.0/16
API_SERVICE_IP=10.43.0.1
DNS_IP=10.43.0.10
DATA=${LAPSEGUARD_CLUSTER_DATA:-/var/lib/lapseguard-cluster}
RUN=/run/lapseguard-cluster
PKI=$DATA/pki
LOGS=$DATA/logs
BIN=$CACHE/k8s/$K8S_VERSION/bin
COREDNS_BIN=$CACHE/coredns/$COREDNS_VERSION/coredns
PAUSE_IMAGE=localhost/lapseguard-cluster/pause:$PAUSE_VERSION
COREDNS_IMAGE=localhost/lapseguard-cluster/coredns:${COREDNS_VERSION#v}
BUSYBOX_IMAGE=localhost/lapseguard-cluster/busybox:debian12
CONTAINERD_SOCK=$RUN/containerd.sock
KUBECONFIG_FILE=$PKI/admin.kubeconfig
PVS=${LAPSEGUARD_CLUSTER_PVS:-24}
# hostPath folders of the manifests (k8s/components/logging/fluentd.yaml): kept under $DATA,
# bind-mounted over an empty folder that up creates on the host (and down removes)
HOSTPATH_DIRS="/var/lib/lapseguard-fluentd"
# node-wide sysctls that pods may change (OpenSearch's init container raises
# vm.max_map_count): saved by up, restored by down
NODE_SYSCTLS="vm.max_map_count"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")

log() { printf '[cluster %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"

# ---------------------------------------------------------------------------------------
# packages and builds (cached)

ensure_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v etcd >/dev/null || missing+=(etcd-server)
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)   # static: it goes into an image
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v buildah >/dev/null || missing+=(buildah)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

build_kubernetes() {
  local c=$CACHE/k8s/$K8S_VERSION want=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy) b ok=1
  for b in "${want[@]}"; do [ -x "$BIN/$b" ] || ok=0; done
  [ $ok = 1 ] && return 0
  log "building Kubernetes $K8S_VERSION from the Go module proxy (cold: tens of minutes on 2 cores)"
  mkdir -p "$c"
  if [ ! -f "$c/src/go.mod" ]; then
    GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
    local d; d=$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION
    rm -rf "$c/src.tmp"; cp -a "$d" "$c/src.tmp"; chmod -R u+w "$c/src.tmp"
    rm -f "$c/src.tmp/go.work" "$c/src.tmp/go.work.sum"
    # The staging modules are not in the module zip: use their published versions.
    sed -i -E "s#^(\s*k8s.io/[a-z0-9-]+) => ./staging/src/(k8s.io/[a-z0-9-]+)\$#\1 => \2 v0.${K8S_VERSION#v1.}#" "$c/src.tmp/go.mod"
    mv "$c/src.tmp" "$c/src"
  fi
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  rm -rf "$BIN.tmp"; mkdir -p "$BIN.tmp"
  (cd "$c/src" && GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 10 go build -trimpath \
     -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" \
     -o "$BIN.tmp/" ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubelet ./cmd/kube-proxy)
  rm -rf "$BIN"; mv "$BIN.tmp" "$BIN"
}

# kubectl from the same sources as the cluster (Debian's kubernetes-client is 1.20; the
# machine's may be outside the supported skew)
build_kubectl() {
  [ -x "$BIN/kubectl" ] && return 0
  log "building kubectl $K8S_VERSION"
  (cd "$CACHE/k8s/$K8S_VERSION/src" && GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 10 go build -trimpath \
     -ldflags "-s -w -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitVersion=$K8S_VERSION" \
     -o "$BIN/kubectl.tmp" ./cmd/kubectl)
  mv "$BIN/kubectl.tmp" "$BIN/kubectl"
}
kubectl_bin() { if [ -x "$BIN/kubectl" ]; then echo "$BIN/kubectl"; else command -v kubectl; fi; }

build_coredns() {
  [ -x "$COREDNS_BIN" ] && return 0
  local c=$CACHE/coredns/$COREDNS_VERSION
  log "building CoreDNS $COREDNS_VERSION from the Go module proxy"
  mkdir -p "$c"
  if [ ! -f "$c/src/plugin.cfg.orig" ]; then
    GOFLAGS=-mod=mod go mod download -json "github.com/coredns/coredns@$COREDNS_VERSION" >/dev/null
    rm -rf "$c/src"; cp -a "$(go env GOMODCACHE)/github.com/coredns/coredns@$COREDNS_VERSION" "$c/src"; chmod -R u+w "$c/src"
    (cd "$c/src"
     cp plugin.cfg plugin.cfg.orig
     local keep=" root metadata reload bind ready health prometheus errors log loadbalance cache template hosts kubernetes loop forward "
     { grep '^#' plugin.cfg.orig; grep -v '^#' plugin.cfg.orig | while IFS=: read -r n p; do
         case "$keep" in *" $n "*) echo "$n:$p";; esac; done; } > plugin.cfg
     GOFLAGS=-mod=mod go run directives_generate.go)
  fi
  (cd "$c/src" && GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "-s -w" -o "$COREDNS_BIN.tmp" .)
  mv "$COREDNS_BIN.tmp" "$COREDNS_BIN"
}

# A docker-archive of a one-layer image made from a folder (buildah, no runtime needed).
image_from_dir() { # name dir archive entrypoint…
  local name=$1 dir=$2 out=$3; shift 3
  local ctr; ctr=$(buildah from --quiet scratch)
  buildah copy --quiet "$ctr" "$dir" / >/dev/null
  buildah config --entrypoint "$(printf '%s\n' "$@" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().split()))')" "$ctr"
  buildah commit --quiet --rm "$ctr" "$name" >/dev/null
  rm -f "$out.tmp"; buildah push --quiet "$name" "docker-archive:$out.tmp:$name" >/dev/null
  mv "$out.tmp" "$out"
}

build_system_images() {
  local img=$CACHE/images t
  mkdir -p "$img"
  if [ ! -f "$img/pause-$PAUSE_VERSION.tar" ]; then
    log "building $PAUSE_IMAGE"
    t=$(mktemp -d); GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
    gcc -Os -static -DVERSION="\"$PAUSE_VERSION\"" -o "$t/pause" "$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c"
    strip "$t/pause"
    image_from_dir "$PAUSE_IMAGE" "$t" "$img/pause-$PAUSE_VERSION.tar" /pause; rm -rf "$t"
  fi
  if [ ! -f "$img/coredns-$COREDNS_VERSION.tar" ]; then
    log "building $COREDNS_IMAGE"
    t=$(mktemp -d); cp "$COREDNS_BIN" "$t/coredns"
    image_from_dir "$COREDNS_IMAGE" "$t" "$img/coredns-$COREDNS_VERSION.tar" /coredns; rm -rf "$t"
  fi
  if [ ! -f "$img/busybox-debian12.tar" ]; then
    log "building $BUSYBOX_IMAGE (Debian's busybox-static)"
    t=$(mktemp -d); mkdir -p "$t/bin" "$t/tmp" "$t/etc"; cp /bin/busybox "$t/bin/busybox"
    for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$t/bin/$a"; done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$t/etc/passwd"
    chmod 1777 "$t/tmp"
    image_from_dir "$BUSYBOX_IMAGE" "$t" "$img/busybox-debian12.tar" /bin/sh; rm -rf "$t"
  fi
}

# ---------------------------------------------------------------------------------------
# certificates and configuration

pki() {
  [ -f "$KUBECONFIG_FILE" ] && return 0
  mkdir -p "$PKI"; local p=$PKI
  openssl genrsa -out "$p/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$p/ca.key" -subj "/CN=lapseguard-cluster-ca" -days 3650 -out "$p/ca.crt" 2>/dev/null
  cert() { # name subject [sans]
    openssl genrsa -out "$p/$1.key" 2048 2>/dev/null
    openssl req -new -key "$p/$1.key" -subj "$2" -out "$p/$1.csr" 2>/dev/null
    local ext; ext=$(mktemp)
    if [ -n "${3:-}" ]; then printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$3" > "$ext"
    else printf 'extendedKeyUsage=clientAuth\n' > "$ext"; fi
    openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 3650 -extfile "$ext" -out "$p/$1.crt" 2>/dev/null
    rm -f "$ext" "$p/$1.csr"
  }
  cert apiserver "/CN=kube-apiserver" "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP,IP:$API_SERVICE_IP"
  cert admin "/O=system:masters/CN=lapseguard-admin"
  cert kubelet "/O=system:nodes/CN=system:node:$NODE"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  cert proxy "/CN=system:kube-proxy"
  openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
  openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
  kc() { # name server
    KUBECONFIG=$p/$1.kubeconfig "$(kubectl_bin)" config set-cluster lapseguard --server="$2" --certificate-authority="$p/ca.crt" --embed-certs >/dev/null
    KUBECONFIG=$p/$1.kubeconfig "$(kubectl_bin)" config set-credentials "$1" --client-certificate="$p/$1.crt" --client-key="$p/$1.key" --embed-certs >/dev/null
    KUBECONFIG=$p/$1.kubeconfig "$(kubectl_bin)" config set-context lapseguard --cluster=lapseguard --user="$1" >/dev/null
    KUBECONFIG=$p/$1.kubeconfig "$(kubectl_bin)" config use-context lapseguard >/dev/null
  }
  for n in kubelet controller-manager scheduler proxy; do kc $n https://127.0.0.1:6443; done
  kc admin "https://$NODE_IP:6443"
}

write_configs() {
  mkdir -p "$DATA/etc" "$RUN/cni" "$DATA/volumes" "$LOGS" "$DATA/sysctl"
  cat > "$DATA/etc/containerd.toml" <<EOF
version = 2
root = "$DATA/containerd"
state = "$RUN/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$RUN/containerd.sock.ttrpc"
[debug]
  address = "$RUN/containerd-debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$DATA/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The VM refuses lowering OOM scores: without this, runc fails with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni"
EOF
  cat > "$RUN/cni/10-lapseguard.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "lapseguard", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "$DATA/cni-ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}
]}
EOF
  : > "$RUN/resolv.conf"   # no upstream DNS: pods resolve cluster names only
  cat > "$DATA/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: $RUN/resolv.conf
failSwapOn: false
# Kernel-wide sysctls are never written: up shows the kubelet the values it wants
# through bind mounts inside the cluster's own mount namespace.
protectKernelDefaults: true
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
address: $NODE_IP
tlsCertFile: $PKI/apiserver.crt
tlsPrivateKeyFile: $PKI/apiserver.key
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "200Mi", nodefs.available: "2%", imagefs.available: "2%", nodefs.inodesFree: "2%"}
maxPods: 110
# The VM refuses lowering OOM scores.
oomScoreAdj: 0
EOF
}

system_manifests() {
  local i pvs=""
  for i in $(seq 0 $((PVS - 1))); do
    mkdir -p "$DATA/volumes/pv$i"; chmod 0777 "$DATA/volumes/pv$i"
    pvs+="---
apiVersion: v1
kind: PersistentVolume
metadata: {name: local-pv$i, labels: {lapseguard.io/cluster: local}}
spec:
  capacity: {storage: 50Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  storageClassName: local
  local: {path: $DATA/volumes/pv$i}
  nodeAffinity:
    required:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$NODE]}]}]
"
  done
  cat <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
$pvs---
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: system:coredns}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: system:coredns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:coredns}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
        errors
        health {
            lameduck 5s
        }
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            ttl 30
        }
        cache 30
        loop
        reload
        loadbalance
    }
    # No upstream resolver in the cluster's network: any other name does not exist
    # (answered at once, so that nothing waits on a time-out).
    .:53 {
        errors
        template ANY ANY {
            rcode NXDOMAIN
        }
        reload
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      containers:
        - name: coredns
          image: $COREDNS_IMAGE
          imagePullPolicy: Never
          args: [-conf, /etc/coredns/Corefile]
          ports:
            - {name: dns, containerPort: 53, protocol: UDP}
            - {name: dns-tcp, containerPort: 53, protocol: TCP}
          readinessProbe: {httpGet: {path: /ready, port: 8181}}
          livenessProbe: {httpGet: {path: /health, port: 8080}, initialDelaySeconds: 10}
          resources: {requests: {cpu: 50m, memory: 32Mi}, limits: {memory: 128Mi}}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
          volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_IP
  selector: {k8s-app: kube-dns}
  ports:
    - {name: dns, port: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, protocol: TCP}
EOF
}

# ---------------------------------------------------------------------------------------
# inside the namespaces: start every component, wait, stop them on TERM

run_inside() {
  set +e
  mount --make-rshared /
  # Show the kubelet the kernel-wide sysctls it insists on without changing the host's.
  local k v f
  for kv in vm.overcommit_memory=1 vm.panic_on_oom=0 kernel.panic=10 kernel.panic_on_oops=1 \
            kernel.keys.root_maxkeys=1000000 kernel.keys.root_maxbytes=25000000; do
    k=${kv%%=*}; v=${kv#*=}; f=/proc/sys/${k//.//}
    if [ "$(cat "$f")" != "$v" ]; then echo "$v" > "$DATA/sysctl/$k"; mount --bind "$DATA/sysctl/$k" "$f"; fi
  done
  # The node's /var/log (the kubelet's /var/log/pods and /var/log/containers, which the
  # log collector reads) and the manifests' hostPath folders live under $DATA: bind mounts
  # in this mount namespace only.
  mkdir -p "$DATA/node/var-log"; mount --bind "$DATA/node/var-log" /var/log
  for f in $HOSTPATH_DIRS; do
    mkdir -p "$DATA/node$f"; mount --bind "$DATA/node$f" "$f"
  done
  ip link set lo up
  local pids=()
  # each component restarted when it exits (as a service manager would)
  start() {
    local name=$1; shift
    ( c=; trap 'kill $c 2>/dev/null; wait; exit 0' TERM
      while :; do "$@" >>"$LOGS/$name.log" 2>&1 & c=$!; echo "$c $name" > "$RUN/$name.pid"; wait $c
        echo "=== $name exited ($?), restarting in 3 s" >>"$LOGS/$name.log"; sleep 3; done ) &
    pids+=($!); echo "$name" >> "$RUN/components"
  }
  stop_all() { kill "${pids[@]}" 2>/dev/null; wait; exit 0; }
  trap stop_all TERM INT
  : > "$RUN/components"
  start etcd etcd --name lapseguard --data-dir "$DATA/etcd" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster lapseguard=http://127.0.0.1:2380
  start containerd containerd --config "$DATA/etc/containerd.toml"
  start kube-apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --advertise-address=$NODE_IP --bind-address=0.0.0.0 --secure-port=6443 \
    --service-cluster-ip-range=$SERVICE_CIDR --allow-privileged=true \
    --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --kubelet-client-certificate="$PKI/admin.crt" --kubelet-client-key="$PKI/admin.key" \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --profiling=false \
    --kubelet-preferred-address-types=InternalIP,Hostname
  # The apiserver first: the others retry, but their logs stay readable.
  for _ in $(seq 90); do curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    https://127.0.0.1:6443/readyz >/dev/null 2>&1 && break; sleep 1; done
  start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$PKI/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$PKI/controller-manager.kubeconfig" --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" --use-service-account-credentials=true \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --allocate-node-cidrs=true --cluster-cidr=$CLUSTER_CIDR --node-cidr-mask-size=24 --service-cluster-ip-range=$SERVICE_CIDR \
    --leader-elect=false --bind-address=127.0.0.1 --profiling=false
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$PKI/scheduler.kubeconfig" \
    --authentication-kubeconfig="$PKI/scheduler.kubeconfig" --authorization-kubeconfig="$PKI/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --profiling=false
  start kubelet "$BIN/kubelet" --config="$DATA/etc/kubelet.yaml" --kubeconfig="$PKI/kubelet.kubeconfig" \
    --root-dir="$DATA/kubelet" --cert-dir="$DATA/kubelet/pki" --hostname-override=$NODE --node-ip=$NODE_IP
  # In a network namespace of its own conntrack's limits are read-only: leave them alone.
  start kube-proxy "$BIN/kube-proxy" --kubeconfig="$PKI/proxy.kubeconfig" --hostname-override=$NODE \
    --proxy-mode=iptables --cluster-cidr=$CLUSTER_CIDR --conntrack-max-per-core=0 \
    --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
    --metrics-bind-address=127.0.0.1:10249 --oom-score-adj=0
  wait
}

kube() { KUBECONFIG=$KUBECONFIG_FILE "$(kubectl_bin)" "$@"; }
ctr_() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

import_archive() { # docker-archive tar
  ctr_ images import --no-unpack=false "$1" >/dev/null 2>&1 || ctr_ images import "$1" >/dev/null
}

cmd_import() {
  [ -S "$CONTAINERD_SOCK" ] || die "the cluster is not running (scripts/cluster.sh up)"
  local img t
  for img in "$@"; do
    t=$(mktemp -d -p "$DATA")
    log "importing $img"
    buildah push --quiet "$img" "docker-archive:$t/image.tar:$img" >/dev/null
    ctr_ images import "$t/image.tar" >/dev/null
    rm -rf "$t"
  done
}

cmd_up() {
  local t0=$SECONDS
  if [ -f "$RUN/supervisor.pid" ] && kill -0 "$(cat "$RUN/supervisor.pid")" 2>/dev/null; then
    log "already running"; cmd_status; return 0
  fi
  ensure_packages
  build_kubernetes
  build_kubectl
  build_coredns
  build_system_images
  log "builds ready after $((SECONDS - t0)) s"
  mkdir -p "$DATA" "$RUN"
  ls /run/netns 2>/dev/null | grep '^cni-' > "$RUN/netns-before" || true
  local k f
  if [ ! -f "$RUN/sysctl-saved" ]; then
    for k in $NODE_SYSCTLS; do echo "$k=$(sysctl -n "$k")"; done > "$RUN/sysctl-saved"
  fi
  for f in $HOSTPATH_DIRS; do
    [ -e "$f" ] || { mkdir -p "$f"; echo "$f" >> "$RUN/created-dirs"; }
  done
  pki
  write_configs
  # the network namespace: a veth to the host (10.231.0.1 ↔ 10.231.0.2), nothing routed beyond
  if ! ip netns list 2>/dev/null | grep -qx "$NETNS\( .*\)\?"; then
    ip netns add "$NETNS"
    ip link add lg-host type veth peer name lg-node netns "$NETNS"
    ip addr add $HOST_IP/30 dev lg-host; ip link set lg-host up
    ip netns exec "$NETNS" ip addr add $NODE_IP/30 dev lg-node
    ip netns exec "$NETNS" ip link set lg-node up
    ip netns exec "$NETNS" ip link set lo up
    ip netns exec "$NETNS" ip route add default via $HOST_IP
  fi
  # nsenter, not `ip netns exec`: that remounts /sys and would hide the cgroup hierarchies.
  setsid nsenter --net="/run/netns/$NETNS" unshare --mount --propagation slave -- \
    env LAPSEGUARD_CLUSTER_DATA="$DATA" "$SELF" _inside >"$LOGS/supervisor.log" 2>&1 < /dev/null &
  echo $! > "$RUN/supervisor.pid"
  log "waiting for the API server"
  local i
  for i in $(seq 120); do kube get --raw /readyz >/dev/null 2>&1 && break; sleep 1
    kill -0 "$(cat "$RUN/supervisor.pid")" 2>/dev/null || die "the cluster stopped: $LOGS/*.log"; done
  kube get --raw /readyz >/dev/null || die "API server not ready: $LOGS/kube-apiserver.log"
  log "API server ready after $((SECONDS - t0)) s; importing system images"
  for i in $(seq 30); do [ -S "$CONTAINERD_SOCK" ] && break; sleep 1; done
  for f in "$CACHE/images/pause-$PAUSE_VERSION.tar" "$CACHE/images/coredns-$COREDNS_VERSION.tar" "$CACHE/images/busybox-debian12.tar"; do
    ctr_ images import "$f" >/dev/null
  done
  system_manifests | kube apply -f - >/dev/null
  log "waiting for node $NODE"
  kube wait --for=condition=Ready "node/$NODE" --timeout=180s >/dev/null
  kube -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null
  log "up after $((SECONDS - t0)) s"
  echo "export KUBECONFIG=$KUBECONFIG_FILE   # or: scripts/cluster.sh kubectl …"
}

cmd_status() {
  if [ -f "$RUN/supervisor.pid" ] && kill -0 "$(cat "$RUN/supervisor.pid")" 2>/dev/null; then
    echo "running (supervisor $(cat "$RUN/supervisor.pid"), netns $NETNS, data $DATA)"
    local name pid
    while read -r name; do
      read -r pid _ < "$RUN/$name.pid" || pid=
      if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "  $name: pid $pid, restarts: $(grep -c "^=== $name exited" "$LOGS/$name.log")"
      else echo "  $name: STOPPED (see $LOGS/$name.log)"; fi
    done < "$RUN/components"
    kube get nodes -o wide 2>&1 || true
    kube get pods -A -o wide 2>&1 || true
  else
    echo "not running"
    return 3
  fi
}

kill_cgroup_tree() { # kill every process under the kubepods cgroups, then remove them
  local d i left
  for i in 1 2 3 4 5 6 7 8 9 10; do
    # a container being created or paused sits frozen: thaw it, or SIGKILL never lands
    [ -d /sys/fs/cgroup/freezer/kubepods ] && find /sys/fs/cgroup/freezer/kubepods -name freezer.state \
      -exec sh -c 'for f; do echo THAWED > "$f"; done' _ {} + 2>/dev/null
    for d in /sys/fs/cgroup/*/kubepods; do
      [ -d "$d" ] || continue
      find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    done
    sleep 1
    left=0
    for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/k8s.io; do
      [ -d "$d" ] || continue
      find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      [ -d "$d" ] && case "$d" in */kubepods) left=1;; esac
    done
    [ $left = 0 ] && return 0
  done
  log "could not remove: $(ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null | tr '\n' ' ')"
}

cmd_down() {
  local pid i f kv stragglers
  if [ -f "$RUN/supervisor.pid" ]; then
    pid=$(cat "$RUN/supervisor.pid")
    # the components first (so that the kubelet recreates nothing), then the pods (their
    # processes are in the kubepods cgroups), then what is left in the network namespace
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true   # nsenter and unshare exec'd into `cluster.sh _inside`
      for i in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
  fi
  kill_cgroup_tree
  if ip netns list 2>/dev/null | grep -q "^$NETNS\b"; then
    # whatever is still in the namespace (containerd shims, stragglers)
    for i in 1 2 3; do
      stragglers=$(ip netns pids "$NETNS" 2>/dev/null || true)
      [ -z "$stragglers" ] && break
      # shellcheck disable=SC2086
      kill -9 $stragglers 2>/dev/null || true; sleep 1
    done
    ip netns del "$NETNS" 2>/dev/null || true
  fi
  ip link del lg-host 2>/dev/null || true
  # pod network namespaces: containerd's bind mounts lived in the cluster's mount
  # namespace and are gone; only the empty files it created under /run/netns remain
  if [ -d /run/netns ]; then
    for f in /run/netns/cni-*; do
      [ -e "$f" ] || continue
      grep -qx "$(basename "$f")" "$RUN/netns-before" 2>/dev/null && continue
      mountpoint -q "$f" || rm -f "$f"
    done
  fi
  if [ -f "$RUN/sysctl-saved" ]; then
    while IFS= read -r kv; do sysctl -q -w "$kv" >/dev/null || log "could not restore $kv"; done < "$RUN/sysctl-saved"
  fi
  if [ -f "$RUN/created-dirs" ]; then
    while IFS= read -r f; do rmdir "$f" 2>/dev/null || log "left $f (not empty)"; done < "$RUN/created-dirs"
  fi
  rm -rf "$DATA" "$RUN"
  log "down"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kubectl) shift; kube "$@" ;;
  import) shift; cmd_import "$@" ;;
  build) ensure_packages; build_kubernetes; build_kubectl; build_coredns; build_system_images ;;
  _build-coredns) build_coredns; build_system_images ;;
  _inside) run_inside ;;
  *) echo "usage: $0 up|down|status|kubectl ARGS…|import IMAGE…|build" >&2; exit 2 ;;
esac

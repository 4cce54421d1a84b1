#!/usr/bin/env bash
# Builds the binaries the cluster tests run, from Go modules, once.
# Output: $DCLOUD_K8S_CACHE/<k8s version>/bin/{kube-apiserver,kube-controller-manager,
#         kube-scheduler,kubectl,etcd,kwok} (control plane and simulated fleet) and
#         {kubelet,containerd,containerd-shim-runc-v2,ctr} (the real node real-0), helm (the
#         Zero to JupyterHub chart), kueue (queueing), with Kueue's CRDs and webhook
#         manifests in $DCLOUD_K8S_CACHE/<k8s version>/kueue/, and local-path-provisioner
#         (the volume provisioner of real-0, tests/cluster/storage.py).
# Each step is skipped when its binaries exist. Nothing is written inside the repository.
set -euo pipefail

K8S_VERSION="${DCLOUD_K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${DCLOUD_ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${DCLOUD_KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${DCLOUD_HELM_VERSION:-v3.22.0}"
KUEUE_VERSION="${DCLOUD_KUEUE_VERSION:-v0.17.0}"
CONTAINERD_VERSION="${DCLOUD_CONTAINERD_VERSION:-v2.4.2}"
LOCAL_PATH_VERSION="${DCLOUD_LOCAL_PATH_VERSION:-v0.0.30}"
CACHE="${DCLOUD_K8S_CACHE:-$HOME/.cache/dcloud-k8s}"
OUT="$CACHE/$K8S_VERSION/bin"
WORK="$CACHE/$K8S_VERSION/src"

# need BINARY...: true when one of them is not built yet
need() {
  for b in "$@"; do [ -x "$OUT/$b" ] || return 0; done
  return 1
}
CONTROL_PLANE=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
NODE=(kubelet containerd containerd-shim-runc-v2 ctr)
STAGES_DONE="$OUT/../stages/fast/kustomization.yaml"  # KWOK's stages, copied after kwok
KUEUE_DONE="$OUT/../kueue/webhook/manifests.yaml"  # Kueue's manifests, copied after kueue
if ! need "${CONTROL_PLANE[@]}" etcd kwok "${NODE[@]}" helm kueue local-path-provisioner && [ -f "$STAGES_DONE" ] && [ -f "$KUEUE_DONE" ]; then
  echo "cluster binaries already built in $OUT"
  exit 0
fi
mkdir -p "$OUT" "$WORK"
# -p=1 would halve peak memory on a small machine: GOFLAGS="-p=1" tests/cluster/build.sh
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false ${GOFLAGS:-}" GOTOOLCHAIN=local

# Writes a go.mod for a throwaway main module that requires $1@$2 and turns every
# relative-path replace in that module's own go.mod into a published-version replace.
# $3 maps a replaced module path to the version to use (a sed expression on "path").
wrapper_module() {
  local mod="$1" ver="$2" dir="$3" verfor="$4"
  local upstream
  upstream=$(cd "$dir" && go mod download -json "$mod@$ver" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module dcloud.test/build"
    grep -E '^go [0-9]' "$upstream"
    grep -E '^godebug ' "$upstream" || true
    # multi-line godebug blocks
    sed -n '/^godebug (/,/^)/p' "$upstream"
    echo "require $mod $ver"
    # "path => ./staging/src/..." or "path => ../api": replace each by its published version
    grep -E '^\s*[a-z0-9./-]+\s+=>\s+\.\.?/' "$upstream" | awk '{print $1}' | sort -u | while read -r p; do
      echo "replace $p => $p $(eval "$verfor" <<<"$p")"
    done
  } >"$dir/go.mod"
}

time_it() { /usr/bin/time -f "%e s wall, %M KiB peak RSS: $1" "${@:2}"; }

# Kubernetes control plane and kubectl
K8S_DIR="$WORK/kubernetes"; mkdir -p "$K8S_DIR"
K8S_MINOR_VER="v0.${K8S_VERSION#v1.}"   # v1.36.3 -> v0.36.3 for staging modules
printf 'module dcloud.test/build\n' >"$K8S_DIR/go.mod"
wrapper_module k8s.io/kubernetes "$K8S_VERSION" "$K8S_DIR" "echo $K8S_MINOR_VER #"
cat >"$K8S_DIR/main.go" <<'GO'
package main

func main() {}
GO
MAJOR=1; MINOR="$(echo "$K8S_VERSION" | cut -d. -f2)"
LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=$MAJOR -X k8s.io/component-base/version.gitMinor=$MINOR -X k8s.io/component-base/version.gitTreeState=clean"
LDFLAGS="$LDFLAGS -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=$MAJOR -X k8s.io/client-go/pkg/version.gitMinor=$MINOR"
if need "${CONTROL_PLANE[@]}"; then (
  cd "$K8S_DIR"
  go mod download k8s.io/kubernetes
  go get k8s.io/kubernetes/cmd/kube-apiserver@"$K8S_VERSION" k8s.io/kubernetes/cmd/kube-controller-manager@"$K8S_VERSION" \
    k8s.io/kubernetes/cmd/kube-scheduler@"$K8S_VERSION" k8s.io/kubernetes/cmd/kubectl@"$K8S_VERSION"
  time_it "kube-apiserver, kube-controller-manager, kube-scheduler, kubectl" \
    go build -ldflags "$LDFLAGS" -o "$OUT/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
); fi

# kubelet, from the same wrapper module and with the same version stamps
if need kubelet; then (
  cd "$K8S_DIR"
  go get k8s.io/kubernetes/cmd/kubelet@"$K8S_VERSION"
  time_it "kubelet" go build -ldflags "$LDFLAGS" -o "$OUT/kubelet" k8s.io/kubernetes/cmd/kubelet
); fi

# etcd 3.6.x: server/v3 is itself the main package
if need etcd; then
  ETCD_DIR="$WORK/etcd"; mkdir -p "$ETCD_DIR"
  printf 'module dcloud.test/build\n' >"$ETCD_DIR/go.mod"
  wrapper_module go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_DIR" "echo $ETCD_VERSION #"
  printf 'package main\n\nfunc main() {}\n' >"$ETCD_DIR/main.go"
  (
    cd "$ETCD_DIR"
    go get go.etcd.io/etcd/server/v3@"$ETCD_VERSION"
    time_it "etcd" go build -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3
  )
fi

# KWOK: no replace directives, plain go install works
if need kwok || [ ! -f "$STAGES_DONE" ]; then
  need kwok && time_it "kwok" env GOBIN="$OUT" go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # stage definitions KWOK needs at run time, copied beside the binary
  go mod download "sigs.k8s.io/kwok@$KWOK_VERSION"
  STAGES=$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage
  mkdir -p "$OUT/../stages" && cp -r "$STAGES/." "$OUT/../stages/" && chmod -R u+w "$OUT/../stages"
fi

# containerd 2 with its runc shim and ctr: no replace directives either. The tags leave out
# snapshotters that need cgo or kernel headers; runc and the CNI plugins come from the OS.
if need containerd containerd-shim-runc-v2 ctr; then
  CTRD=github.com/containerd/containerd/v2
  time_it "containerd, containerd-shim-runc-v2, ctr" env GOBIN="$OUT" go install -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X $CTRD/version.Version=$CONTAINERD_VERSION" \
    "$CTRD/cmd/containerd@$CONTAINERD_VERSION" "$CTRD/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "$CTRD/cmd/ctr@$CONTAINERD_VERSION"
fi
# Helm: without the version stamps of Helm's Makefile the binary believes the cluster is
# Kubernetes v1.20 and refuses charts that need more (Zero to JupyterHub 4.4 needs >=1.28).
if need helm; then
  HELM=helm.sh/helm/v3
  time_it "helm" env GOBIN="$OUT" go install -ldflags "-s -w -X $HELM/internal/version.version=$HELM_VERSION \
    -X $HELM/pkg/chartutil.k8sVersionMajor=1 -X $HELM/pkg/chartutil.k8sVersionMinor=$MINOR \
    -X $HELM/pkg/lint/rules.k8sVersionMajor=1 -X $HELM/pkg/lint/rules.k8sVersionMinor=$MINOR" \
    "$HELM/cmd/helm@$HELM_VERSION"
fi

# Kueue's manager, and from its module the CRDs and the webhook configurations it serves
if need kueue || [ ! -f "$KUEUE_DONE" ]; then
  need kueue && time_it "kueue" env GOBIN="$OUT" go install -ldflags "-s -w" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  go mod download "sigs.k8s.io/kueue@$KUEUE_VERSION"
  KUEUE_SRC=$(go env GOMODCACHE)/sigs.k8s.io/kueue@$KUEUE_VERSION/config/components
  rm -rf "$OUT/../kueue" && mkdir -p "$OUT/../kueue"
  cp -r "$KUEUE_SRC/crd/bases" "$OUT/../kueue/crd" && cp -r "$KUEUE_SRC/webhook" "$OUT/../kueue/webhook"
  [ -d "$KUEUE_SRC/visibility" ] && cp -r "$KUEUE_SRC/visibility" "$OUT/../kueue/visibility"
  chmod -R u+w "$OUT/../kueue"
fi
# Rancher's local-path-provisioner, in a wrapper module that raises its Kubernetes client
# libraries (client-go v0.30) to the cluster's own (v0.36): it compiles unchanged, talks to the
# API server of its own version, and reuses the packages the control plane's build compiled
# (about 13 s instead of about 2 min compiling client-go v0.30 as well). It runs out of cluster
# with a kubeconfig (storage.py).
if need local-path-provisioner; then (
  LPP_DIR="$WORK/local-path-provisioner"; mkdir -p "$LPP_DIR" && cd "$LPP_DIR"
  printf 'module dcloud.test/build\n\ngo 1.26\n' >go.mod
  go get "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION" "k8s.io/client-go@$K8S_MINOR_VER" \
    "k8s.io/api@$K8S_MINOR_VER" "k8s.io/apimachinery@$K8S_MINOR_VER"
  time_it "local-path-provisioner" go build -ldflags "-s -w" -o "$OUT/local-path-provisioner" \
    github.com/rancher/local-path-provisioner
); fi
echo "built into $OUT"

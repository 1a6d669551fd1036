#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, kubectl, etcd, helm) from Go modules at the
# versions pinned in tools/*/go.mod, into a versioned cache outside the repository.
# Complete caches are reused; only missing binaries are built. Prints the bin directory last.
#
#   tools/build-control-plane.sh          the control plane the tests need
#   tools/build-control-plane.sh --node   also a real node's parts at the same Kubernetes
#                                         version: kubelet, kube-scheduler, kube-controller-manager
#                                         (a DaemonSet needs the last two to get pods at all)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION="$(awk '/^require k8s.io\/kubernetes /{print $3}' "$here/k8s/go.mod")"
ETCD_VERSION="$(awk '/^require go.etcd.io\/etcd\/server\/v3 /{print $3}' "$here/etcd/go.mod")"
HELM_VERSION="$(awk '/^require helm.sh\/helm\/v3 /{print $3}' "$here/helm/go.mod")"
cache_root="${POLCA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/polca}"
bin_dir="$cache_root/bin/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}"
mkdir -p "$bin_dir"

log() { echo "[control-plane] $*" >&2; }

# The stamp is what `kubectl version`, the API server's /version and helm's kubeVersion checks read.
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
k8s_minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
k8s_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date -X $pkg.gitCommit=module-$K8S_VERSION"
done
helm_k8s_minor="$(cd "$here/helm" && go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)"
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$helm_k8s_minor"
done
etcd_ldflags="-X go.etcd.io/etcd/api/v3/version.GitSHA=module-$ETCD_VERSION"

build() { # name module-dir package ldflags
  local name="$1" dir="$2" pkg="$3" ldflags="$4"
  if [[ -x "$bin_dir/$name" ]]; then log "$name: cached"; return; fi
  log "$name: building $pkg (first time only; several minutes on 2 cores)"
  local start=$SECONDS
  # nice: the machine is shared, and these builds take both cores for minutes.
  (cd "$here/$dir" && CGO_ENABLED=0 nice go build -trimpath -ldflags "-s -w $ldflags" -o "$bin_dir/$name.tmp" "$pkg")
  mv "$bin_dir/$name.tmp" "$bin_dir/$name"
  log "$name: built in $((SECONDS - start)) s"
}

build etcd etcd go.etcd.io/etcd/server/v3 "$etcd_ldflags"
build kube-apiserver k8s k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
build kubectl k8s k8s.io/kubernetes/cmd/kubectl "$k8s_ldflags"
build helm helm helm.sh/helm/v3/cmd/helm "$helm_ldflags"
if [[ "${1:-}" == "--node" ]]; then
  build kubelet k8s k8s.io/kubernetes/cmd/kubelet "$k8s_ldflags"
  build kube-scheduler k8s k8s.io/kubernetes/cmd/kube-scheduler "$k8s_ldflags"
  build kube-controller-manager k8s k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
fi
echo "$bin_dir"

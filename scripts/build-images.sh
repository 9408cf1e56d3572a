#!/usr/bin/env bash
# Builds both images with Debian's buildah on a machine with no Docker engine and no reachable
# registry, then starts each entrypoint as the image's non-root user:
# - the runtime base: a Debian bookworm root filesystem from mmdebstrap (glibc, libssl3,
#   CA certificates: what distroless cc provides), imported as localhost/lagscale-runtime;
# - the build base: the same with Debian's C toolchain (librdkafka's build) and the host's
#   Rust toolchain (rustc --print sysroot), as localhost/lagscale-rust:RUST_VERSION;
# - `buildah build` of adapter/Dockerfile and worker/Dockerfile with those as BUILD_IMAGE and
#   RUNTIME_IMAGE (vfs storage, chroot isolation: no daemon, no user namespaces needed);
# - each image's entrypoint run as 65532:65532: --help, then the worker and the adapter started
#   for real against local Kafka and mongod (the harness's lagscale-local, without workers).
# Root filesystems are cached under $LAGSCALE_TOOLS/images. First run: ~25 min on 2 cores (two
# release builds inside the image).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TOOLS=${LAGSCALE_TOOLS:-$HOME/.cache/lagscale/tools}
images=$TOOLS/images
mkdir -p "$images"
log() { printf '[images] %s\n' "$*" >&2; }
if ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah mmdebstrap >/dev/null
fi
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
rust=$(rustc --version | awk '{print $2}')

rootfs() { # NAME PACKAGES: a root filesystem directory, made once
  local dir=$images/$1
  if [ ! -x "$dir/usr/bin/env" ]; then
    log "root filesystem $1 (mmdebstrap bookworm: $2)"
    rm -rf "$dir.part"
    mmdebstrap --quiet --variant=minbase --format=directory --include="$2" bookworm "$dir.part" >&2
    rm -rf "$dir"
    mv "$dir.part" "$dir"
  fi
  echo "$dir"
}

runtime=localhost/lagscale-runtime:bookworm
if ! buildah inspect --type image "$runtime" >/dev/null 2>&1; then
  root=$(rootfs runtime "ca-certificates,libssl3")
  c=$(buildah from scratch)
  buildah copy "$c" "$root" / >/dev/null
  buildah commit --quiet "$c" "$runtime" >/dev/null
  buildah rm "$c" >/dev/null
fi

build=localhost/lagscale-rust:$rust
if ! buildah inspect --type image "$build" >/dev/null 2>&1; then
  root=$(rootfs build "ca-certificates,build-essential,pkg-config,libssl-dev,perl,python3,zlib1g-dev,curl")
  c=$(buildah from scratch)
  buildah copy "$c" "$root" / >/dev/null
  log "adding the host's Rust $rust toolchain"
  buildah copy "$c" "$(rustc --print sysroot)" /usr/local/rust >/dev/null
  # The host's trust store: where crates.io is reached through a TLS-inspecting proxy, its CA
  # is there (the build stage downloads crates; the runtime image keeps Debian's own).
  buildah copy "$c" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
  buildah config --env PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env CARGO_HOME=/usr/local/cargo "$c"
  buildah commit --quiet "$c" "$build" >/dev/null
  buildah rm "$c" >/dev/null
fi

for image in lag-adapter:adapter projection-worker:worker; do
  name=${image%%:*} dir=${image#*:}
  log "building $name ($dir/Dockerfile)"
  started=$SECONDS
  buildah build --quiet --layers -f "$dir/Dockerfile" \
    --build-arg "BUILD_IMAGE=$build" --build-arg "RUNTIME_IMAGE=$runtime" \
    -t "localhost/$name:test" . >&2
  log "$name built in $((SECONDS - started)) s; $(buildah inspect --type image --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}}' "localhost/$name:test")"
done

# Each entrypoint as the image's user.
for cmd in "lag-adapter:lag-adapter --help" "projection-worker:projection-worker --help" "projection-worker:event-producer --help"; do
  image=${cmd%%:*} run=${cmd#*:}
  c=$(buildah from "localhost/$image:test")
  buildah run --user 65532:65532 "$c" -- $run >/dev/null
  log "$run: ok as 65532"
  buildah rm "$c" >/dev/null
done
# Both for real, against local services: Kafka and mongod from the harness's local pipeline
# (no workers of its own), the images' worker and adapter beside it on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # URL EXPECTED-CODE: until the code answers, or 60 s
  for _ in $(seq 1 300); do
    [ "$(curl -sk -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" = "$2" ] && return 0
    sleep 0.2
  done
  return 1
}
scripts/install-services.sh kafka mongo >/dev/null
# shellcheck source=/dev/null
. "$TOOLS/env"
cargo build --quiet --locked -p lagscale-tests --bin lagscale-local
setsid target/debug/lagscale-local --workers 0 --producer-rate 200 >"$images/local.log" 2>&1 &
local_pid=$!
containers=()
cleanup() {
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill -- "-$pid" 2>/dev/null; done
  kill -TERM "$local_pid" 2>/dev/null; wait "$local_pid" 2>/dev/null || true
  for c in "${containers[@]:-}"; do [ -n "$c" ] && buildah rm "$c" >/dev/null 2>&1; done
}
pids=()
trap cleanup EXIT
for _ in $(seq 1 600); do grep -q "ready in" "$images/local.log" && break; sleep 0.2; done
grep -q "ready in" "$images/local.log" || { cat "$images/local.log" >&2; echo "local services did not start" >&2; exit 1; }
bootstrap=$(awk '$1 == "kafka" {print $3}' "$images/local.log")
mongo=$(awk '$1 == "mongod" {print $2}' "$images/local.log")

c=$(buildah from localhost/projection-worker:test); containers+=("$c")
http=$(free_port)
setsid buildah run --user 65532:65532 "$c" -- projection-worker --bootstrap-servers "$bootstrap" \
  --mongodb-uri "$mongo" --worker-id image-worker --http-listen "127.0.0.1:$http" \
  --metrics-listen "127.0.0.1:$(free_port)" >"$images/worker-run.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$http/ready" 200 \
  || { cat "$images/worker-run.log" >&2; echo "the worker image did not become ready" >&2; exit 1; }
log "projection-worker started as 65532 in its image: joined the group, /ready 200"

c=$(buildah from localhost/lag-adapter:test); containers+=("$c")
port=$(free_port)
setsid buildah run --user 65532:65532 "$c" -- lag-adapter --bootstrap-servers "$bootstrap" \
  --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$(free_port)" --insecure-no-auth \
  >"$images/adapter-run.log" 2>&1 &
pids+=($!)
wait_http "https://127.0.0.1:$port/readyz" 200 \
  || { cat "$images/adapter-run.log" >&2; echo "the adapter image did not become ready" >&2; exit 1; }
# The worker commits every 5 s: wait until the group has offsets to serve.
url="https://127.0.0.1:$port/apis/external.metrics.k8s.io/v1beta1/namespaces/default/kafka_consumergroup_lag?labelSelector=consumergroup%3Dprojection-worker"
for _ in $(seq 1 300); do
  lag=$(curl -sk "$url" || true)
  grep -q '"metricName":"kafka_consumergroup_lag"' <<<"$lag" && break
  sleep 0.2
done
grep -q '"metricName":"kafka_consumergroup_lag"' <<<"$lag" || { echo "the adapter image answered: $lag" >&2; exit 1; }
log "lag-adapter started as 65532 in its image: ready on Kafka, serving the worker's lag"

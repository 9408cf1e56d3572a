#!/usr/bin/env bash
# Builds both images with Debian's buildah on a machine with no Docker engine and no reachable
# registry, then starts each entrypoint as the image's non-root user:
# - the runtime base: a Debian bookworm root filesystem from mmdebstrap (glibc, libssl3,
#   CA certificates: what distroless cc provides), imported as localhost/lagscale-runtime;
# - the build base: the same with Debian's C toolchain (librdkafka's build) and the host's
#   Rust toolchain (rustc --print sysroot), as localhost/lagscale-rust:RUST_VERSION;
# - `buildah build` of adapter/Dockerfile and worker/Dockerfile with those as BUILD_IMAGE and
#   RUNTIME_IMAGE (vfs storage, chroot isolation: no daemon, no user namespaces needed);
# - each image's entrypoint run as 65532:65532: --help, and the adapter started for real.
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
# The adapter for real: it starts, serves /livez over TLS, and is not ready without Kafka.
c=$(buildah from localhost/lag-adapter:test)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
setsid buildah run --user 65532:65532 "$c" -- lag-adapter --bootstrap-servers 127.0.0.1:1 \
  --listen "127.0.0.1:$port" --metrics-listen 127.0.0.1:0 --insecure-no-auth >"$images/adapter-run.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  curl -sk "https://127.0.0.1:$port/livez" 2>/dev/null | grep -q ok && break
  sleep 0.2
done
live=$(curl -sk "https://127.0.0.1:$port/livez" || true)
ready=$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port/readyz" || true)
kill -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
buildah rm "$c" >/dev/null
[ "$live" = ok ] || { cat "$images/adapter-run.log" >&2; echo "the adapter image did not serve /livez" >&2; exit 1; }
log "lag-adapter started as 65532 in its image: /livez ok, /readyz $ready without Kafka"

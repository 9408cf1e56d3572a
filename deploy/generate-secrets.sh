#!/usr/bin/env bash
# Creates what deploy/base/kustomization.yaml's secretGenerator reads, in deploy/base/secrets/ (ignored by
# git), keeping files that already exist (--force replaces them):
#   mongo.env          MongoDB root user, a random password, and the workers' MONGODB_URI
#   kafka-client.env   KAFKA_PROPERTIES for SASL/TLS clusters (empty: plaintext)
#   kafka-ca.crt       the CA of the brokers' TLS certificates, when private (empty: none);
#                      mounted at /etc/kafka-client/ca.crt, so ssl.ca.location=/etc/kafka-client/ca.crt
#   adapter-ca.crt     a CA for the adapter's serving certificate (the APIService caBundle)
#   adapter-tls.crt/.key  the serving certificate for lag-adapter.pipeline.svc, 1 year
# and, in deploy/keda/secrets/ (KEDA_SECRETS_DIR), for deploy/keda/:
#   keda-client.crt/.key  KEDA's client certificate for the adapter's gRPC port, from the same CA
#   ca.crt                that CA, for KEDA to check the adapter's certificate
# Bring your own instead by writing these files yourself (e.g. from cert-manager, see README).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${SECRETS_DIR:-$here/base/secrets}
keda=${KEDA_SECRETS_DIR:-$here/keda/secrets}
force=0
[ "${1:-}" = --force ] && force=1
mkdir -p "$dir" "$keda"
chmod 700 "$dir" "$keda"
umask 077
need() { [ "$force" = 1 ] || [ ! -s "$1" ]; }

if need "$dir/mongo.env"; then
  password=$(openssl rand -hex 24)
  cat > "$dir/mongo.env" <<ENV
MONGO_INITDB_ROOT_USERNAME=lagscale
MONGO_INITDB_ROOT_PASSWORD=$password
MONGODB_URI=mongodb://lagscale:$password@mongo.pipeline.svc:27017/?authSource=admin
ENV
  echo "wrote $dir/mongo.env"
fi

if need "$dir/kafka-client.env"; then
  # e.g. KAFKA_PROPERTIES=security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,sasl.username=...,sasl.password=...
  echo "KAFKA_PROPERTIES=" > "$dir/kafka-client.env"
  echo "wrote $dir/kafka-client.env"
fi
[ -e "$dir/kafka-ca.crt" ] || { : > "$dir/kafka-ca.crt"; echo "wrote $dir/kafka-ca.crt (empty)"; }

# One CA for the adapter's serving certificate and KEDA's client certificate; its key is not
# kept, so any missing file renews all of them.
if need "$dir/adapter-tls.crt" || need "$dir/adapter-tls.key" || need "$dir/adapter-ca.crt" \
   || need "$keda/keda-client.crt" || need "$keda/keda-client.key" || need "$keda/ca.crt"; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=lagscale-adapter-ca" -keyout "$tmp/ca.key" -out "$dir/adapter-ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=lag-adapter.pipeline.svc" -keyout "$dir/adapter-tls.key" -out "$tmp/tls.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:lag-adapter.pipeline.svc,DNS:lag-adapter.pipeline.svc.cluster.local,DNS:lag-adapter" \
    "extendedKeyUsage=serverAuth" "keyUsage=digitalSignature" > "$tmp/ext"
  openssl x509 -req -in "$tmp/tls.csr" -CA "$dir/adapter-ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 365 -extfile "$tmp/ext" -out "$dir/adapter-tls.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=keda-operator" -keyout "$keda/keda-client.key" -out "$tmp/client.csr" 2>/dev/null
  printf '%s\n' "extendedKeyUsage=clientAuth" "keyUsage=digitalSignature" > "$tmp/client-ext"
  openssl x509 -req -in "$tmp/client.csr" -CA "$dir/adapter-ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 365 -extfile "$tmp/client-ext" -out "$keda/keda-client.crt" 2>/dev/null
  cp "$dir/adapter-ca.crt" "$keda/ca.crt"
  echo "wrote $dir/adapter-ca.crt, adapter-tls.crt, adapter-tls.key and $keda/keda-client.crt, keda-client.key, ca.crt (the CA key is not kept)"
fi

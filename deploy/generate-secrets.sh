#!/usr/bin/env bash
# Creates what deploy/kustomization.yaml's secretGenerator reads, in deploy/secrets/ (ignored by
# git), keeping files that already exist (--force replaces them):
#   mongo.env          MongoDB root user, a random password, and the workers' MONGODB_URI
#   kafka-client.env   KAFKA_PROPERTIES for SASL/TLS clusters (empty: plaintext)
#   kafka-ca.crt       the CA of the brokers' TLS certificates, when private (empty: none);
#                      mounted at /etc/kafka-client/ca.crt, so ssl.ca.location=/etc/kafka-client/ca.crt
#   adapter-ca.crt     a CA for the adapter's serving certificate (the APIService caBundle)
#   adapter-tls.crt/.key  the serving certificate for lag-adapter.pipeline.svc, 1 year
# Bring your own instead by writing these files yourself (e.g. from cert-manager, see README).
set -euo pipefail
dir=${SECRETS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/secrets}
force=0
[ "${1:-}" = --force ] && force=1
mkdir -p "$dir"
chmod 700 "$dir"
umask 077
need() { [ "$force" = 1 ] || [ ! -s "$dir/$1" ]; }

if need mongo.env; then
  password=$(openssl rand -hex 24)
  cat > "$dir/mongo.env" <<ENV
MONGO_INITDB_ROOT_USERNAME=lagscale
MONGO_INITDB_ROOT_PASSWORD=$password
MONGODB_URI=mongodb://lagscale:$password@mongo.pipeline.svc:27017/?authSource=admin
ENV
  echo "wrote $dir/mongo.env"
fi

if need kafka-client.env; then
  # e.g. KAFKA_PROPERTIES=security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,sasl.username=...,sasl.password=...
  echo "KAFKA_PROPERTIES=" > "$dir/kafka-client.env"
  echo "wrote $dir/kafka-client.env"
fi
[ -e "$dir/kafka-ca.crt" ] || { : > "$dir/kafka-ca.crt"; echo "wrote $dir/kafka-ca.crt (empty)"; }

if need adapter-tls.crt || need adapter-tls.key || need adapter-ca.crt; then
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
  echo "wrote $dir/adapter-ca.crt, adapter-tls.crt, adapter-tls.key (the CA key is not kept)"
fi

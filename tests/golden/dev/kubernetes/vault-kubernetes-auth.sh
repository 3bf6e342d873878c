#!/bin/sh
# Rendered by ccoas from the plan of stack dev (dev): do not edit.
# Run once Vault is initialised and unsealed, with a token allowed to manage mounts, auth
# methods and policies (the root token right after `vault operator init`):
#   kubectl -n ccoas-dev exec -i vault-0 -- env VAULT_TOKEN=... sh -s < vault-kubernetes-auth.sh
# Idempotent. It never writes a secret value: it lists the paths still missing, and exits 1
# until each holds a `value` (vault kv put); pods wait in their Vault Agent init container.
set -eu
export VAULT_ADDR=http://127.0.0.1:8200
vault secrets list | grep -q '^ccoas/ ' || vault secrets enable -path=ccoas -version=2 kv
vault auth list | grep -q '^kubernetes/ ' || vault auth enable kubernetes
vault write auth/kubernetes/config kubernetes_host="https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}" >/dev/null

# minio: reads minio/directus_access_key, minio/directus_secret_key, minio/root_password, minio/root_user
vault policy write dev-minio - <<'POLICY'
# dev-minio: what the minio service may read
path "ccoas/data/dev/minio/directus_access_key" {
  capabilities = ["read"]
}
path "ccoas/data/dev/minio/directus_secret_key" {
  capabilities = ["read"]
}
path "ccoas/data/dev/minio/root_password" {
  capabilities = ["read"]
}
path "ccoas/data/dev/minio/root_user" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/dev-minio \
  bound_service_account_names=minio \
  bound_service_account_namespaces=ccoas-dev \
  token_policies=dev-minio token_ttl=5m token_max_ttl=15m >/dev/null

# monitoring: reads postgres/monitoring_password, redis/monitoring_password
vault policy write dev-monitoring - <<'POLICY'
# dev-monitoring: what the monitoring service may read
path "ccoas/data/dev/postgres/monitoring_password" {
  capabilities = ["read"]
}
path "ccoas/data/dev/redis/monitoring_password" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/dev-monitoring \
  bound_service_account_names=monitoring \
  bound_service_account_namespaces=ccoas-dev \
  token_policies=dev-monitoring token_ttl=5m token_max_ttl=15m >/dev/null

# postgres: reads postgres/directus_password, postgres/embedder_password, postgres/monitoring_password, postgres/postgraphile_password, postgres/superuser_password
vault policy write dev-postgres - <<'POLICY'
# dev-postgres: what the postgres service may read
path "ccoas/data/dev/postgres/directus_password" {
  capabilities = ["read"]
}
path "ccoas/data/dev/postgres/embedder_password" {
  capabilities = ["read"]
}
path "ccoas/data/dev/postgres/monitoring_password" {
  capabilities = ["read"]
}
path "ccoas/data/dev/postgres/postgraphile_password" {
  capabilities = ["read"]
}
path "ccoas/data/dev/postgres/superuser_password" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/dev-postgres \
  bound_service_account_names=postgres \
  bound_service_account_namespaces=ccoas-dev \
  token_policies=dev-postgres token_ttl=5m token_max_ttl=15m >/dev/null

# redis: reads redis/directus_password, redis/health_password, redis/monitoring_password
vault policy write dev-redis - <<'POLICY'
# dev-redis: what the redis service may read
path "ccoas/data/dev/redis/directus_password" {
  capabilities = ["read"]
}
path "ccoas/data/dev/redis/health_password" {
  capabilities = ["read"]
}
path "ccoas/data/dev/redis/monitoring_password" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/dev-redis \
  bound_service_account_names=redis \
  bound_service_account_namespaces=ccoas-dev \
  token_policies=dev-redis token_ttl=5m token_max_ttl=15m >/dev/null

# directus: reads directus/admin_password, directus/provision_token, directus/secret, minio/directus_access_key, minio/directus_secret_key, postgres/directus_password, redis/directus_password
vault policy write dev-directus - <<'POLICY'
# dev-directus: what the directus service may read
path "ccoas/data/dev/directus/admin_password" {
  capabilities = ["read"]
}
path "ccoas/data/dev/directus/provision_token" {
  capabilities = ["read"]
}
path "ccoas/data/dev/directus/secret" {
  capabilities = ["read"]
}
path "ccoas/data/dev/minio/directus_access_key" {
  capabilities = ["read"]
}
path "ccoas/data/dev/minio/directus_secret_key" {
  capabilities = ["read"]
}
path "ccoas/data/dev/postgres/directus_password" {
  capabilities = ["read"]
}
path "ccoas/data/dev/redis/directus_password" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/dev-directus \
  bound_service_account_names=directus \
  bound_service_account_namespaces=ccoas-dev \
  token_policies=dev-directus token_ttl=5m token_max_ttl=15m >/dev/null

# embedder: reads postgres/embedder_password
vault policy write dev-embedder - <<'POLICY'
# dev-embedder: what the embedder service may read
path "ccoas/data/dev/postgres/embedder_password" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/dev-embedder \
  bound_service_account_names=embedder \
  bound_service_account_namespaces=ccoas-dev \
  token_policies=dev-embedder token_ttl=5m token_max_ttl=15m >/dev/null

# postgraphile: reads directus/secret, postgres/postgraphile_password
vault policy write dev-postgraphile - <<'POLICY'
# dev-postgraphile: what the postgraphile service may read
path "ccoas/data/dev/directus/secret" {
  capabilities = ["read"]
}
path "ccoas/data/dev/postgres/postgraphile_password" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/dev-postgraphile \
  bound_service_account_names=postgraphile \
  bound_service_account_namespaces=ccoas-dev \
  token_policies=dev-postgraphile token_ttl=5m token_max_ttl=15m >/dev/null

# nginx: reads nginx/tls_cert, nginx/tls_key
vault policy write dev-nginx - <<'POLICY'
# dev-nginx: what the nginx service may read
path "ccoas/data/dev/nginx/tls_cert" {
  capabilities = ["read"]
}
path "ccoas/data/dev/nginx/tls_key" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/dev-nginx \
  bound_service_account_names=nginx \
  bound_service_account_namespaces=ccoas-dev \
  token_policies=dev-nginx token_ttl=5m token_max_ttl=15m >/dev/null

missing=0
vault kv metadata get -mount=ccoas dev/directus/admin_password >/dev/null 2>&1 || { echo 'missing: ccoas/dev/directus/admin_password (password of the first Directus admin)'; missing=1; }
vault kv metadata get -mount=ccoas dev/directus/provision_token >/dev/null 2>&1 || { echo 'missing: ccoas/dev/directus/provision_token (static token of the ccoas-provisioning user (no email, no password: no login can lock it out), which provisioning authenticates with)'; missing=1; }
vault kv metadata get -mount=ccoas dev/directus/secret >/dev/null 2>&1 || { echo 'missing: ccoas/dev/directus/secret (Directus SECRET: the HS256 key that signs access tokens (the GraphQL plane, Hasura or PostGraphile, verifies them with it))'; missing=1; }
vault kv metadata get -mount=ccoas dev/minio/directus_access_key >/dev/null 2>&1 || { echo 'missing: ccoas/dev/minio/directus_access_key (MinIO access key of directus)'; missing=1; }
vault kv metadata get -mount=ccoas dev/minio/directus_secret_key >/dev/null 2>&1 || { echo 'missing: ccoas/dev/minio/directus_secret_key (MinIO secret key of directus)'; missing=1; }
vault kv metadata get -mount=ccoas dev/minio/root_password >/dev/null 2>&1 || { echo 'missing: ccoas/dev/minio/root_password (MinIO root password)'; missing=1; }
vault kv metadata get -mount=ccoas dev/minio/root_user >/dev/null 2>&1 || { echo 'missing: ccoas/dev/minio/root_user (MinIO root user name)'; missing=1; }
vault kv metadata get -mount=ccoas dev/nginx/tls_cert >/dev/null 2>&1 || { echo 'missing: ccoas/dev/nginx/tls_cert (TLS certificate chain for localhost)'; missing=1; }
vault kv metadata get -mount=ccoas dev/nginx/tls_key >/dev/null 2>&1 || { echo 'missing: ccoas/dev/nginx/tls_key (TLS private key for localhost)'; missing=1; }
vault kv metadata get -mount=ccoas dev/postgres/directus_password >/dev/null 2>&1 || { echo 'missing: ccoas/dev/postgres/directus_password (password of the postgres role directus)'; missing=1; }
vault kv metadata get -mount=ccoas dev/postgres/embedder_password >/dev/null 2>&1 || { echo 'missing: ccoas/dev/postgres/embedder_password (password of the postgres role embedder)'; missing=1; }
vault kv metadata get -mount=ccoas dev/postgres/monitoring_password >/dev/null 2>&1 || { echo 'missing: ccoas/dev/postgres/monitoring_password (password of the postgres role monitoring (pg_monitor))'; missing=1; }
vault kv metadata get -mount=ccoas dev/postgres/postgraphile_password >/dev/null 2>&1 || { echo 'missing: ccoas/dev/postgres/postgraphile_password (password of the postgres role postgraphile)'; missing=1; }
vault kv metadata get -mount=ccoas dev/postgres/superuser_password >/dev/null 2>&1 || { echo 'missing: ccoas/dev/postgres/superuser_password (password of the postgres superuser)'; missing=1; }
vault kv metadata get -mount=ccoas dev/redis/directus_password >/dev/null 2>&1 || { echo 'missing: ccoas/dev/redis/directus_password (password of the redis ACL user directus)'; missing=1; }
vault kv metadata get -mount=ccoas dev/redis/health_password >/dev/null 2>&1 || { echo 'missing: ccoas/dev/redis/health_password (password of the redis ACL user health (PING only))'; missing=1; }
vault kv metadata get -mount=ccoas dev/redis/monitoring_password >/dev/null 2>&1 || { echo 'missing: ccoas/dev/redis/monitoring_password (password of the redis ACL user monitoring (INFO and read-only introspection))'; missing=1; }
exit $missing

#!/bin/sh
# Rendered by ccoas from the plan of stack prod (prod): do not edit.
# Run once Vault is initialised and unsealed, with a token allowed to manage mounts, auth
# methods and policies (the root token right after `vault operator init`):
#   kubectl -n ccoas-prod exec -i vault-0 -- env VAULT_TOKEN=... sh -s < vault-kubernetes-auth.sh
# Idempotent. It never writes a secret value: it lists the paths still missing, and exits 1
# until each holds a `value` (vault kv put); pods wait in their Vault Agent init container.
set -eu
export VAULT_ADDR=http://127.0.0.1:8200
vault secrets list | grep -q '^ccoas/ ' || vault secrets enable -path=ccoas -version=2 kv
vault auth list | grep -q '^kubernetes/ ' || vault auth enable kubernetes
vault write auth/kubernetes/config kubernetes_host="https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}" >/dev/null

# minio: reads minio/directus_access_key, minio/directus_secret_key, minio/root_password, minio/root_user
vault policy write prod-minio - <<'POLICY'
# prod-minio: what the minio service may read
path "ccoas/data/prod/minio/directus_access_key" {
  capabilities = ["read"]
}
path "ccoas/data/prod/minio/directus_secret_key" {
  capabilities = ["read"]
}
path "ccoas/data/prod/minio/root_password" {
  capabilities = ["read"]
}
path "ccoas/data/prod/minio/root_user" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/prod-minio \
  bound_service_account_names=minio \
  bound_service_account_namespaces=ccoas-prod \
  token_policies=prod-minio token_ttl=5m token_max_ttl=15m >/dev/null

# monitoring: reads postgres/monitoring_password, redis/monitoring_password
vault policy write prod-monitoring - <<'POLICY'
# prod-monitoring: what the monitoring service may read
path "ccoas/data/prod/postgres/monitoring_password" {
  capabilities = ["read"]
}
path "ccoas/data/prod/redis/monitoring_password" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/prod-monitoring \
  bound_service_account_names=monitoring \
  bound_service_account_namespaces=ccoas-prod \
  token_policies=prod-monitoring token_ttl=5m token_max_ttl=15m >/dev/null

# postgres: reads postgres/directus_password, postgres/hasura_password, postgres/monitoring_password, postgres/superuser_password
vault policy write prod-postgres - <<'POLICY'
# prod-postgres: what the postgres service may read
path "ccoas/data/prod/postgres/directus_password" {
  capabilities = ["read"]
}
path "ccoas/data/prod/postgres/hasura_password" {
  capabilities = ["read"]
}
path "ccoas/data/prod/postgres/monitoring_password" {
  capabilities = ["read"]
}
path "ccoas/data/prod/postgres/superuser_password" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/prod-postgres \
  bound_service_account_names=postgres \
  bound_service_account_namespaces=ccoas-prod \
  token_policies=prod-postgres token_ttl=5m token_max_ttl=15m >/dev/null

# redis: reads redis/directus_password, redis/health_password, redis/monitoring_password
vault policy write prod-redis - <<'POLICY'
# prod-redis: what the redis service may read
path "ccoas/data/prod/redis/directus_password" {
  capabilities = ["read"]
}
path "ccoas/data/prod/redis/health_password" {
  capabilities = ["read"]
}
path "ccoas/data/prod/redis/monitoring_password" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/prod-redis \
  bound_service_account_names=redis \
  bound_service_account_namespaces=ccoas-prod \
  token_policies=prod-redis token_ttl=5m token_max_ttl=15m >/dev/null

# directus: reads directus/admin_password, directus/provision_token, directus/secret, minio/directus_access_key, minio/directus_secret_key, postgres/directus_password, redis/directus_password
vault policy write prod-directus - <<'POLICY'
# prod-directus: what the directus service may read
path "ccoas/data/prod/directus/admin_password" {
  capabilities = ["read"]
}
path "ccoas/data/prod/directus/provision_token" {
  capabilities = ["read"]
}
path "ccoas/data/prod/directus/secret" {
  capabilities = ["read"]
}
path "ccoas/data/prod/minio/directus_access_key" {
  capabilities = ["read"]
}
path "ccoas/data/prod/minio/directus_secret_key" {
  capabilities = ["read"]
}
path "ccoas/data/prod/postgres/directus_password" {
  capabilities = ["read"]
}
path "ccoas/data/prod/redis/directus_password" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/prod-directus \
  bound_service_account_names=directus \
  bound_service_account_namespaces=ccoas-prod \
  token_policies=prod-directus token_ttl=5m token_max_ttl=15m >/dev/null

# hasura: reads directus/secret, hasura/admin_secret, postgres/hasura_password
vault policy write prod-hasura - <<'POLICY'
# prod-hasura: what the hasura service may read
path "ccoas/data/prod/directus/secret" {
  capabilities = ["read"]
}
path "ccoas/data/prod/hasura/admin_secret" {
  capabilities = ["read"]
}
path "ccoas/data/prod/postgres/hasura_password" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/prod-hasura \
  bound_service_account_names=hasura \
  bound_service_account_namespaces=ccoas-prod \
  token_policies=prod-hasura token_ttl=5m token_max_ttl=15m >/dev/null

# nginx: reads nginx/tls_cert, nginx/tls_key
vault policy write prod-nginx - <<'POLICY'
# prod-nginx: what the nginx service may read
path "ccoas/data/prod/nginx/tls_cert" {
  capabilities = ["read"]
}
path "ccoas/data/prod/nginx/tls_key" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/prod-nginx \
  bound_service_account_names=nginx \
  bound_service_account_namespaces=ccoas-prod \
  token_policies=prod-nginx token_ttl=5m token_max_ttl=15m >/dev/null

missing=0
vault kv metadata get -mount=ccoas prod/directus/admin_password >/dev/null 2>&1 || { echo 'missing: ccoas/prod/directus/admin_password (password of the first Directus admin)'; missing=1; }
vault kv metadata get -mount=ccoas prod/directus/provision_token >/dev/null 2>&1 || { echo 'missing: ccoas/prod/directus/provision_token (static token of the ccoas-provisioning user (no email, no password: no login can lock it out), which provisioning authenticates with)'; missing=1; }
vault kv metadata get -mount=ccoas prod/directus/secret >/dev/null 2>&1 || { echo 'missing: ccoas/prod/directus/secret (Directus SECRET: the HS256 key that signs access tokens (the GraphQL plane, Hasura or PostGraphile, verifies them with it))'; missing=1; }
vault kv metadata get -mount=ccoas prod/hasura/admin_secret >/dev/null 2>&1 || { echo 'missing: ccoas/prod/hasura/admin_secret (Hasura admin secret)'; missing=1; }
vault kv metadata get -mount=ccoas prod/minio/directus_access_key >/dev/null 2>&1 || { echo 'missing: ccoas/prod/minio/directus_access_key (MinIO access key of directus)'; missing=1; }
vault kv metadata get -mount=ccoas prod/minio/directus_secret_key >/dev/null 2>&1 || { echo 'missing: ccoas/prod/minio/directus_secret_key (MinIO secret key of directus)'; missing=1; }
vault kv metadata get -mount=ccoas prod/minio/root_password >/dev/null 2>&1 || { echo 'missing: ccoas/prod/minio/root_password (MinIO root password)'; missing=1; }
vault kv metadata get -mount=ccoas prod/minio/root_user >/dev/null 2>&1 || { echo 'missing: ccoas/prod/minio/root_user (MinIO root user name)'; missing=1; }
vault kv metadata get -mount=ccoas prod/nginx/tls_cert >/dev/null 2>&1 || { echo 'missing: ccoas/prod/nginx/tls_cert (TLS certificate chain for app.example.org)'; missing=1; }
vault kv metadata get -mount=ccoas prod/nginx/tls_key >/dev/null 2>&1 || { echo 'missing: ccoas/prod/nginx/tls_key (TLS private key for app.example.org)'; missing=1; }
vault kv metadata get -mount=ccoas prod/postgres/directus_password >/dev/null 2>&1 || { echo 'missing: ccoas/prod/postgres/directus_password (password of the postgres role directus)'; missing=1; }
vault kv metadata get -mount=ccoas prod/postgres/hasura_password >/dev/null 2>&1 || { echo 'missing: ccoas/prod/postgres/hasura_password (password of the postgres role hasura)'; missing=1; }
vault kv metadata get -mount=ccoas prod/postgres/monitoring_password >/dev/null 2>&1 || { echo 'missing: ccoas/prod/postgres/monitoring_password (password of the postgres role monitoring (pg_monitor))'; missing=1; }
vault kv metadata get -mount=ccoas prod/postgres/superuser_password >/dev/null 2>&1 || { echo 'missing: ccoas/prod/postgres/superuser_password (password of the postgres superuser)'; missing=1; }
vault kv metadata get -mount=ccoas prod/redis/directus_password >/dev/null 2>&1 || { echo 'missing: ccoas/prod/redis/directus_password (password of the redis ACL user directus)'; missing=1; }
vault kv metadata get -mount=ccoas prod/redis/health_password >/dev/null 2>&1 || { echo 'missing: ccoas/prod/redis/health_password (password of the redis ACL user health (PING only))'; missing=1; }
vault kv metadata get -mount=ccoas prod/redis/monitoring_password >/dev/null 2>&1 || { echo 'missing: ccoas/prod/redis/monitoring_password (password of the redis ACL user monitoring (INFO and read-only introspection))'; missing=1; }
exit $missing

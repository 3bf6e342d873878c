#!/bin/sh
# Rendered by ccoas from the plan of stack pr-42 (ci): do not edit.
# Run once Vault is initialised and unsealed, with a token allowed to manage mounts, auth
# methods and policies (the root token right after `vault operator init`):
#   kubectl -n ccoas-pr-42 exec -i vault-0 -- env VAULT_TOKEN=... sh -s < vault-kubernetes-auth.sh
# Idempotent. It never writes a secret value: it lists the paths still missing, and exits 1
# until each holds a `value` (vault kv put); pods wait in their Vault Agent init container.
set -eu
export VAULT_ADDR=http://127.0.0.1:8200
vault secrets list | grep -q '^ccoas/ ' || vault secrets enable -path=ccoas -version=2 kv
vault auth list | grep -q '^kubernetes/ ' || vault auth enable kubernetes
vault write auth/kubernetes/config kubernetes_host="https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}" >/dev/null

# minio: reads minio/directus_access_key, minio/directus_secret_key, minio/root_password, minio/root_user
vault policy write pr-42-minio - <<'POLICY'
# pr-42-minio: what the minio service may read
path "ccoas/data/pr-42/minio/directus_access_key" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/minio/directus_secret_key" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/minio/root_password" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/minio/root_user" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/pr-42-minio \
  bound_service_account_names=minio \
  bound_service_account_namespaces=ccoas-pr-42 \
  token_policies=pr-42-minio token_ttl=5m token_max_ttl=15m >/dev/null

# postgres: reads postgres/directus_password, postgres/postgraphile_password, postgres/superuser_password
vault policy write pr-42-postgres - <<'POLICY'
# pr-42-postgres: what the postgres service may read
path "ccoas/data/pr-42/postgres/directus_password" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/postgres/postgraphile_password" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/postgres/superuser_password" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/pr-42-postgres \
  bound_service_account_names=postgres \
  bound_service_account_namespaces=ccoas-pr-42 \
  token_policies=pr-42-postgres token_ttl=5m token_max_ttl=15m >/dev/null

# redis: reads redis/directus_password, redis/health_password
vault policy write pr-42-redis - <<'POLICY'
# pr-42-redis: what the redis service may read
path "ccoas/data/pr-42/redis/directus_password" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/redis/health_password" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/pr-42-redis \
  bound_service_account_names=redis \
  bound_service_account_namespaces=ccoas-pr-42 \
  token_policies=pr-42-redis token_ttl=5m token_max_ttl=15m >/dev/null

# directus: reads directus/admin_password, directus/provision_token, directus/secret, minio/directus_access_key, minio/directus_secret_key, postgres/directus_password, redis/directus_password
vault policy write pr-42-directus - <<'POLICY'
# pr-42-directus: what the directus service may read
path "ccoas/data/pr-42/directus/admin_password" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/directus/provision_token" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/directus/secret" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/minio/directus_access_key" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/minio/directus_secret_key" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/postgres/directus_password" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/redis/directus_password" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/pr-42-directus \
  bound_service_account_names=directus \
  bound_service_account_namespaces=ccoas-pr-42 \
  token_policies=pr-42-directus token_ttl=5m token_max_ttl=15m >/dev/null

# postgraphile: reads directus/secret, postgres/postgraphile_password
vault policy write pr-42-postgraphile - <<'POLICY'
# pr-42-postgraphile: what the postgraphile service may read
path "ccoas/data/pr-42/directus/secret" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/postgres/postgraphile_password" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/pr-42-postgraphile \
  bound_service_account_names=postgraphile \
  bound_service_account_namespaces=ccoas-pr-42 \
  token_policies=pr-42-postgraphile token_ttl=5m token_max_ttl=15m >/dev/null

# nginx: reads nginx/tls_cert, nginx/tls_key
vault policy write pr-42-nginx - <<'POLICY'
# pr-42-nginx: what the nginx service may read
path "ccoas/data/pr-42/nginx/tls_cert" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/nginx/tls_key" {
  capabilities = ["read"]
}
POLICY
vault write auth/kubernetes/role/pr-42-nginx \
  bound_service_account_names=nginx \
  bound_service_account_namespaces=ccoas-pr-42 \
  token_policies=pr-42-nginx token_ttl=5m token_max_ttl=15m >/dev/null

missing=0
vault kv metadata get -mount=ccoas pr-42/directus/admin_password >/dev/null 2>&1 || { echo 'missing: ccoas/pr-42/directus/admin_password (password of the first Directus admin)'; missing=1; }
vault kv metadata get -mount=ccoas pr-42/directus/provision_token >/dev/null 2>&1 || { echo 'missing: ccoas/pr-42/directus/provision_token (static token of the ccoas-provisioning user (no email, no password: no login can lock it out), which provisioning authenticates with)'; missing=1; }
vault kv metadata get -mount=ccoas pr-42/directus/secret >/dev/null 2>&1 || { echo 'missing: ccoas/pr-42/directus/secret (Directus SECRET: the HS256 key that signs access tokens (the GraphQL plane, Hasura or PostGraphile, verifies them with it))'; missing=1; }
vault kv metadata get -mount=ccoas pr-42/minio/directus_access_key >/dev/null 2>&1 || { echo 'missing: ccoas/pr-42/minio/directus_access_key (MinIO access key of directus)'; missing=1; }
vault kv metadata get -mount=ccoas pr-42/minio/directus_secret_key >/dev/null 2>&1 || { echo 'missing: ccoas/pr-42/minio/directus_secret_key (MinIO secret key of directus)'; missing=1; }
vault kv metadata get -mount=ccoas pr-42/minio/root_password >/dev/null 2>&1 || { echo 'missing: ccoas/pr-42/minio/root_password (MinIO root password)'; missing=1; }
vault kv metadata get -mount=ccoas pr-42/minio/root_user >/dev/null 2>&1 || { echo 'missing: ccoas/pr-42/minio/root_user (MinIO root user name)'; missing=1; }
vault kv metadata get -mount=ccoas pr-42/nginx/tls_cert >/dev/null 2>&1 || { echo 'missing: ccoas/pr-42/nginx/tls_cert (TLS certificate chain for localhost)'; missing=1; }
vault kv metadata get -mount=ccoas pr-42/nginx/tls_key >/dev/null 2>&1 || { echo 'missing: ccoas/pr-42/nginx/tls_key (TLS private key for localhost)'; missing=1; }
vault kv metadata get -mount=ccoas pr-42/postgres/directus_password >/dev/null 2>&1 || { echo 'missing: ccoas/pr-42/postgres/directus_password (password of the postgres role directus)'; missing=1; }
vault kv metadata get -mount=ccoas pr-42/postgres/postgraphile_password >/dev/null 2>&1 || { echo 'missing: ccoas/pr-42/postgres/postgraphile_password (password of the postgres role postgraphile)'; missing=1; }
vault kv metadata get -mount=ccoas pr-42/postgres/superuser_password >/dev/null 2>&1 || { echo 'missing: ccoas/pr-42/postgres/superuser_password (password of the postgres superuser)'; missing=1; }
vault kv metadata get -mount=ccoas pr-42/redis/directus_password >/dev/null 2>&1 || { echo 'missing: ccoas/pr-42/redis/directus_password (password of the redis ACL user directus)'; missing=1; }
vault kv metadata get -mount=ccoas pr-42/redis/health_password >/dev/null 2>&1 || { echo 'missing: ccoas/pr-42/redis/health_password (password of the redis ACL user health (PING only))'; missing=1; }
exit $missing

# Rendered by ccoas from the plan of stack pr-42 (ci): do not edit.
# The Vault policies of this stack, exactly as ccoas uploads them (same text).
# Each service reads its own secrets under ccoas/data/pr-42/ and nothing else;
# ccoas's own token writes secrets and reads their metadata, never a value.

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

# pr-42-nginx: what the nginx service may read
path "ccoas/data/pr-42/nginx/tls_cert" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/nginx/tls_key" {
  capabilities = ["read"]
}

# pr-42-postgraphile: what the postgraphile service may read
path "ccoas/data/pr-42/directus/secret" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/postgres/postgraphile_password" {
  capabilities = ["read"]
}

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

# pr-42-redis: what the redis service may read
path "ccoas/data/pr-42/redis/directus_password" {
  capabilities = ["read"]
}
path "ccoas/data/pr-42/redis/health_password" {
  capabilities = ["read"]
}

# pr-42-ccoas: the token ccoas itself uses after bootstrap
path "ccoas/data/pr-42/*" {
  capabilities = ["create", "update"]
}
path "ccoas/metadata/pr-42/*" {
  capabilities = ["read", "list", "delete"]
}
path "ccoas/metadata/pr-42" {
  capabilities = ["list"]
}
path "sys/policy/pr-42-*" {
  capabilities = ["read"]
}
path "auth/token/create/pr-42-services" {
  capabilities = ["update"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "ccoas-pki/issue/edge" {
  capabilities = ["update"]
}

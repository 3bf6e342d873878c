# Rendered by ccoas from the plan of stack dev (dev): do not edit.
# The Vault policies of this stack, exactly as ccoas uploads them (same text).
# Each service reads its own secrets under ccoas/data/dev/ and nothing else;
# ccoas's own token writes secrets and reads their metadata, never a value.

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

# dev-embedder: what the embedder service may read
path "ccoas/data/dev/postgres/embedder_password" {
  capabilities = ["read"]
}

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

# dev-monitoring: what the monitoring service may read
path "ccoas/data/dev/postgres/monitoring_password" {
  capabilities = ["read"]
}
path "ccoas/data/dev/redis/monitoring_password" {
  capabilities = ["read"]
}

# dev-nginx: what the nginx service may read
path "ccoas/data/dev/nginx/tls_cert" {
  capabilities = ["read"]
}
path "ccoas/data/dev/nginx/tls_key" {
  capabilities = ["read"]
}

# dev-postgraphile: what the postgraphile service may read
path "ccoas/data/dev/directus/secret" {
  capabilities = ["read"]
}
path "ccoas/data/dev/postgres/postgraphile_password" {
  capabilities = ["read"]
}

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

# dev-ccoas: the token ccoas itself uses after bootstrap
path "ccoas/data/dev/*" {
  capabilities = ["create", "update"]
}
path "ccoas/metadata/dev/*" {
  capabilities = ["read", "list", "delete"]
}
path "ccoas/metadata/dev" {
  capabilities = ["list"]
}
path "sys/policy/dev-*" {
  capabilities = ["read"]
}
path "auth/token/create/dev-services" {
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

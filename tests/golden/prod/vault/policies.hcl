# Rendered by ccoas from the plan of stack prod (prod): do not edit.
# The Vault policies of this stack, exactly as ccoas uploads them (same text).
# Each service reads its own secrets under ccoas/data/prod/ and nothing else;
# ccoas's own token writes secrets and reads their metadata, never a value.

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

# prod-monitoring: what the monitoring service may read
path "ccoas/data/prod/postgres/monitoring_password" {
  capabilities = ["read"]
}
path "ccoas/data/prod/redis/monitoring_password" {
  capabilities = ["read"]
}

# prod-nginx: what the nginx service may read
path "ccoas/data/prod/nginx/tls_cert" {
  capabilities = ["read"]
}
path "ccoas/data/prod/nginx/tls_key" {
  capabilities = ["read"]
}

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

# prod-ccoas: the token ccoas itself uses after bootstrap
path "ccoas/data/prod/*" {
  capabilities = ["create", "update"]
}
path "ccoas/metadata/prod/*" {
  capabilities = ["read", "list", "delete"]
}
path "ccoas/metadata/prod" {
  capabilities = ["list"]
}
path "sys/policy/prod-*" {
  capabilities = ["read"]
}
path "auth/token/create/prod-services" {
  capabilities = ["update"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

#!/bin/sh
# Rendered by ccoas from the plan of stack prod (prod): do not edit.
# Hasura reads its secrets only from the environment: export them from the secret files,
# then exec the engine. Values never touch a file. The metadata is not read from disk: ccoas's
# hook posts replace_metadata.json to the metadata API once the engine answers.
set -eu

secret() {
	if ! [ -s "$1" ]; then
		echo "hasura entrypoint: the secret file $1 is missing or empty" >&2
		exit 1
	fi
	cat "$1"
}

HASURA_GRAPHQL_ADMIN_SECRET=$(secret /run/secrets/hasura_admin_secret)
# Directus signs access tokens with its SECRET (HS256): Hasura verifies them with the same key.
jwt_key=$(secret /run/secrets/directus_secret)
HASURA_GRAPHQL_JWT_SECRET=$(printf '{"type":"HS256","key":"%s"}' "$jwt_key")
# The password generator's alphabet is URL-safe (A-Z a-z 0-9 - _): no escaping needed.
db_password=$(secret /run/secrets/postgres_hasura_password)
HASURA_GRAPHQL_DATABASE_URL="postgres://hasura:${db_password}@postgres:5432/app"
HASURA_GRAPHQL_METADATA_DATABASE_URL=$HASURA_GRAPHQL_DATABASE_URL
unset jwt_key db_password
export HASURA_GRAPHQL_ADMIN_SECRET HASURA_GRAPHQL_JWT_SECRET HASURA_GRAPHQL_DATABASE_URL HASURA_GRAPHQL_METADATA_DATABASE_URL

exec "$@"

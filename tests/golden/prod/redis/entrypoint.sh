#!/bin/sh
# Rendered by ccoas from the plan of stack prod (prod): do not edit.
# Writes Redis's ACL file to the tmpfs /run/redis, then runs the command. The default user
# is off; `health` may only PING (health checks); each client service has its own user.
# Passwords are read from their secret files here, at run time (never in a rendered file),
# and the ACL file holds only their SHA-256 (`#<hex>`).
set -eu
umask 077

acl=/run/redis/users.acl
tmp="$acl.new"

password() {
	if ! [ -s "$1" ]; then
		echo "redis entrypoint: the secret file $1 is missing or empty" >&2
		exit 1
	fi
	cat "$1"
}

# The SHA-256 of a secret file's content, as Redis's ACL wants it. Assigned before use, so
# that a missing file stops the script (set -e) instead of writing an empty hash.
digest() {
	password "$1" >/dev/null
	sha256sum "$1" | cut -d' ' -f1
}
health=$(digest /run/secrets/redis_health_password)
directus=$(digest /run/secrets/redis_directus_password)
monitoring=$(digest /run/secrets/redis_monitoring_password)

{
	printf '%s\n' 'user default off resetpass -@all'
	printf 'user health on #%s -@all +ping\n' "$health"
	printf 'user %s on ~* &* +@all -@admin -@dangerous +info #%s\n' directus "$directus"
	# monitoring (redis exporter): introspection only, no key, no channel
	printf 'user %s on resetkeys resetchannels -@all +ping +info +client|list +slowlog|get +slowlog|len +latency|latest +config|get +dbsize +select #%s\n' monitoring "$monitoring"
} >"$tmp"
mv -f "$tmp" "$acl"

exec "$@"

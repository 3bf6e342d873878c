#!/bin/sh
# Rendered by ccoas from the plan of stack dev (dev): do not edit.
# Writes Redis's ACL file to the tmpfs /run/redis, then runs the command. The default user
# may only PING (health checks); each client service has its own user, whose password is
# read from its secret file here, at run time: it is never in a rendered file.
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

{
	printf '%s\n' 'user default on nopass -@all +ping'
	directus_password=$(password /run/secrets/redis_directus_password)
	printf 'user %s on ~* &* +@all -@admin -@dangerous +info >%s\n' directus "$directus_password"
	unset directus_password
} >"$tmp"
mv -f "$tmp" "$acl"

exec "$@"

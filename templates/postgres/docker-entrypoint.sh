#!/bin/sh
# Entrypoint of the ccoas postgres image, compatible with the official image's contract:
#   POSTGRES_USER (default postgres), POSTGRES_DB (default $POSTGRES_USER),
#   POSTGRES_PASSWORD_FILE (required on first start; a plain POSTGRES_PASSWORD is refused),
#   PGDATA (default /var/lib/postgresql/data), POSTGRES_INITDB_ARGS,
#   /docker-entrypoint-initdb.d/*.sql|*.sh run once on a new cluster.
# On an empty PGDATA it runs initdb (scram-sha-256 over TCP, password from the secret file),
# creates POSTGRES_DB, then execs the command. It never runs as root.
set -eu

if [ "${1#-}" != "$1" ]; then
	set -- postgres "$@"
fi

log() { echo "docker-entrypoint: $*" >&2; }
die() { log "error: $*"; exit 1; }

if [ "$(id -u)" = 0 ]; then
	die "refusing to run as root: run this image as its postgres user (999:999)"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
export PGDATA POSTGRES_USER POSTGRES_DB

socket_dir=/var/run/postgresql
if ! [ -w "$socket_dir" ]; then
	socket_dir=/tmp
fi

init_cluster() {
	if [ -n "${POSTGRES_PASSWORD:-}" ]; then
		die "POSTGRES_PASSWORD is not accepted: pass the password as a file with POSTGRES_PASSWORD_FILE"
	fi
	[ -n "${POSTGRES_PASSWORD_FILE:-}" ] || die "POSTGRES_PASSWORD_FILE must name the superuser password file"
	[ -r "$POSTGRES_PASSWORD_FILE" ] || die "cannot read POSTGRES_PASSWORD_FILE ($POSTGRES_PASSWORD_FILE)"
	[ -s "$POSTGRES_PASSWORD_FILE" ] || die "POSTGRES_PASSWORD_FILE ($POSTGRES_PASSWORD_FILE) is empty"

	mkdir -p "$PGDATA"
	chmod 0700 "$PGDATA" 2>/dev/null || true
	log "initialising a new cluster in $PGDATA"
	# Local (unix socket, inside the container) connections are trusted as in the official
	# image; every TCP connection needs a scram-sha-256 password.
	# shellcheck disable=SC2086
	initdb --username="$POSTGRES_USER" --pwfile="$POSTGRES_PASSWORD_FILE" \
		--auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 \
		${POSTGRES_INITDB_ARGS:-} >&2
	printf '\n%s\n' "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"

	pg_ctl -D "$PGDATA" -w -t 60 \
		-o "-c listen_addresses='' -c unix_socket_directories=$socket_dir" start >&2
	if [ "$POSTGRES_DB" != postgres ]; then
		psql -X -q -v ON_ERROR_STOP=1 -h "$socket_dir" -U "$POSTGRES_USER" -d postgres \
			-v db="$POSTGRES_DB" <<-'SQL'
			SELECT format('CREATE DATABASE %I', :'db') \gexec
		SQL
	fi
	for f in /docker-entrypoint-initdb.d/*; do
		case "$f" in
		*.sh) log "running $f"; . "$f" ;;
		*.sql) log "running $f"; psql -X -q -v ON_ERROR_STOP=1 -h "$socket_dir" -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f "$f" ;;
		*) ;;
		esac
	done
	pg_ctl -D "$PGDATA" -m fast -w stop >&2
	log "cluster ready"
}

if [ "$1" = postgres ] && ! [ -s "$PGDATA/PG_VERSION" ]; then
	init_cluster
fi

exec "$@"

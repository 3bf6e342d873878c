#!/bin/sh
# Rendered by ccoas from the plan of stack prod (prod): do not edit.
# Starts the alert log, the exporters and Alertmanager in the background, then hands PID 1 to
# Prometheus; each listens on 127.0.0.1 only. The health check asks both Prometheus and
# Alertmanager, so a helper that died shows as unhealthy (`ccoas status`, `ccoas up` restarts).
# Credentials are read from their secret files here, at start: never in a rendered file.
set -eu
umask 077
conf=/etc/ccoas/monitoring
run=/tmp/monitoring
mkdir -p "$run" /prometheus/data /prometheus/alertmanager

secret() {
	if ! [ -s "$1" ]; then
		echo "monitoring entrypoint: the secret file $1 is missing or empty" >&2
		exit 1
	fi
	cat "$1"
}

# Alertmanager's config, with the webhook's URL from Vault in place of __WEBHOOK_URL__ when the
# stack names a webhook and the URL is set (else that one line is dropped: the log only).
url=""
URL="$url" awk '
	BEGIN { url = ENVIRON["URL"]; mark = "__WEBHOOK_URL__" }
	{ i = index($0, mark) }
	i && url == "" { next }
	i { $0 = substr($0, 1, i - 1) url substr($0, i + length(mark)) }
	{ print }
' "$conf/alertmanager.yml" >"$run/alertmanager.yml"
url=""

python3 "$conf/alert-log.py" &
prometheus-node-exporter --web.listen-address=127.0.0.1:9100 --collector.disable-defaults \
	--collector.filesystem --collector.textfile --collector.textfile.directory=/run/ccoas-metrics \
	--log.level=warn &
prometheus-blackbox-exporter --web.listen-address=127.0.0.1:9115 --config.file="$conf/blackbox.yml" --log.level=warn &
DATA_SOURCE_URI="postgres:5432/app?sslmode=disable" DATA_SOURCE_USER=monitoring \
DATA_SOURCE_PASS_FILE=/run/secrets/postgres_monitoring_password \
	postgres_exporter --web.listen-address=127.0.0.1:9187 --extend.query-path="$conf/postgres-queries.yml" \
	--log.level=warn &
REDIS_PASSWORD=$(secret /run/secrets/redis_monitoring_password)
export REDIS_PASSWORD
prometheus-redis-exporter -web.listen-address=127.0.0.1:9121 -redis.addr=redis://redis:6379 -redis.user=monitoring &
unset REDIS_PASSWORD
prometheus-alertmanager --config.file="$run/alertmanager.yml" --storage.path=/prometheus/alertmanager \
	--web.listen-address=127.0.0.1:9093 --cluster.listen-address= --log.level=warn &

exec prometheus --config.file="$conf/prometheus.yml" --storage.tsdb.path=/prometheus/data \
	--storage.tsdb.retention.time="$RETENTION_TIME" --storage.tsdb.retention.size="$RETENTION_SIZE" \
	--web.listen-address=127.0.0.1:9090 --log.level=warn

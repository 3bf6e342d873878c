#!/bin/sh
# Rendered by ccoas from the plan of stack prod (prod): do not edit.
# Creates the buckets of buckets.json (private) and one MinIO user per client, whose policy
# reaches only its bucket. Credentials are read from the secret files here and reach mc only
# through its config file (0600, on the tmpfs, removed on exit) or its stdin: never on a
# command line nor in the environment, where `ps` and /proc/<pid>/environ would show them.
set -eu
umask 077
export MC_CONFIG_DIR=/tmp/.mc
trap 'rm -rf "$MC_CONFIG_DIR"' EXIT
secret() {
	if [ ! -s "$1" ]; then
		echo "provision: secret file $1 is missing or empty" >&2
		exit 1
	fi
	cat "$1"
}
root_user=$(secret /run/secrets/minio_root_user)
root_password=$(secret /run/secrets/minio_root_password)
mkdir -p "$MC_CONFIG_DIR"
# printf is a shell builtin: the values never appear in a process's arguments. Generated
# credentials are URL-safe characters, which JSON takes unescaped.
printf '{"version":"10","aliases":{"local":{"url":"http://127.0.0.1:9000","accessKey":"%s","secretKey":"%s","api":"s3v4","path":"auto"}}}\n' \
	"$root_user" "$root_password" >"$MC_CONFIG_DIR/config.json"
unset root_user root_password

# bucket uploads: files uploaded through Directus
mc --quiet mb --ignore-existing local/uploads >/dev/null
mc --quiet anonymous set private local/uploads >/dev/null
printf '%s\n' '{"Statement": [{"Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"], "Effect": "Allow", "Resource": ["arn:aws:s3:::uploads"], "Sid": "ListUploads"}, {"Action": ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:PutObject"], "Effect": "Allow", "Resource": ["arn:aws:s3:::uploads/*"], "Sid": "ObjectsInUploads"}], "Version": "2012-10-17"}' > /tmp/ccoas-directus-policy.json
mc --quiet admin policy create local ccoas-directus /tmp/ccoas-directus-policy.json >/dev/null
# access and secret key on mc's stdin, one a line
{
	secret /run/secrets/minio_directus_access_key
	printf '\n'
	secret /run/secrets/minio_directus_secret_key
	printf '\n'
} | mc --quiet admin user add local >/dev/null
if ! mc --quiet admin policy entities --user "$(secret /run/secrets/minio_directus_access_key)" local 2>/dev/null | grep -q "ccoas-directus"; then
	mc --quiet admin policy attach local ccoas-directus --user "$(secret /run/secrets/minio_directus_access_key)" >/dev/null
fi
rm -f /tmp/ccoas-directus-policy.json

#!/bin/sh
# Rendered by ccoas from the plan of stack pr-42 (ci): do not edit.
# Creates the buckets of buckets.json (private) and one MinIO user per client, whose policy
# reaches only its bucket. Credentials are read from the secret files here, never passed in.
set -eu
umask 077
export MC_CONFIG_DIR=/tmp/.mc
secret() {
	if [ ! -s "$1" ]; then
		echo "provision: secret file $1 is missing or empty" >&2
		exit 1
	fi
	cat "$1"
}
MC_HOST_local="http://$(secret /run/secrets/minio_root_user):$(secret /run/secrets/minio_root_password)@127.0.0.1:9000"
export MC_HOST_local

# bucket uploads: files uploaded through Directus
mc --quiet mb --ignore-existing local/uploads >/dev/null
mc --quiet anonymous set private local/uploads >/dev/null
printf '%s\n' '{"Statement": [{"Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"], "Effect": "Allow", "Resource": ["arn:aws:s3:::uploads"], "Sid": "ListUploads"}, {"Action": ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:PutObject"], "Effect": "Allow", "Resource": ["arn:aws:s3:::uploads/*"], "Sid": "ObjectsInUploads"}], "Version": "2012-10-17"}' > /tmp/ccoas-directus-policy.json
mc --quiet admin policy create local ccoas-directus /tmp/ccoas-directus-policy.json >/dev/null
mc --quiet admin user add local "$(secret /run/secrets/minio_directus_access_key)" "$(secret /run/secrets/minio_directus_secret_key)" >/dev/null
if ! mc --quiet admin policy entities --user "$(secret /run/secrets/minio_directus_access_key)" local 2>/dev/null | grep -q "ccoas-directus"; then
	mc --quiet admin policy attach local ccoas-directus --user "$(secret /run/secrets/minio_directus_access_key)" >/dev/null
fi
rm -f /tmp/ccoas-directus-policy.json

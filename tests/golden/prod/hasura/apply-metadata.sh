#!/bin/sh
# Rendered by ccoas from the plan of stack prod (prod): do not edit.
# Run by ccoas's hook inside the Hasura container once the engine answers: posts the rendered
# metadata (replace_metadata.json) to Hasura's own metadata API on loopback, authenticated
# with the admin secret read here from its file. The secret goes to curl on its standard
# input (a header file, `-H @-`), never on a command line. Inconsistent metadata is refused
# (allow_inconsistent_metadata: false): the hook, and so `ccoas up`, fails and says why.
set -eu

secret_file=/run/secrets/hasura_admin_secret
if ! [ -s "$secret_file" ]; then
	echo "hasura metadata: the secret file $secret_file is missing or empty" >&2
	exit 1
fi
answer=$(printf 'X-Hasura-Admin-Secret: %s\r\nContent-Type: application/json\r\n' "$(cat "$secret_file")" |
	curl -sS --max-time 60 -H @- --data-binary @/etc/ccoas/hasura/replace_metadata.json \
		-w '\n%{http_code}' http://127.0.0.1:8080/v1/metadata)
status=$(printf '%s\n' "$answer" | tail -n 1)
if [ "$status" != 200 ]; then
	echo "hasura metadata: HTTP $status from replace_metadata: $(printf '%s\n' "$answer" | sed '$d' | head -c 2000)" >&2
	exit 1
fi
echo "hasura metadata: replaced ($(printf '%s\n' "$answer" | sed '$d' | head -c 200))"

"""MinIO: S3-compatible object storage. On edge only: its clients are Directus and nginx
(``/storage/<bucket>/`` for public buckets); it needs nothing on db.

It is never published; the console is off. Root credentials are secret files
(``MINIO_ROOT_USER_FILE``/``MINIO_ROOT_PASSWORD_FILE``); update checks and call-home
are off. Locally its image is built from the Go modules of MinIO and its client ``mc``.

Once ready, a hook runs the rendered ``provision.sh`` with ``mc``: the buckets of
``buckets.json``, private, and one MinIO user per client service (Directus) whose policy
reaches only its bucket. Clients never see the root credentials.
"""

from __future__ import annotations

from ccoas.components.base import Component, Context, Recipe, check
from ccoas.plan import Artifact, Bucket, Hook, Secret, Service, Stop, VolumeMount

PORT = 9000
# The last commit of the (now unmaintained) community MinIO: the Go module proxy serves it,
# while the RELEASE.* pseudo-versions are refused there.
RELEASE = "v0.0.0-20260212201848-7aac2a2c5b7c"
MC_RELEASE = "v0.0.0-20250313080218-cf909e1063a9"  # the last commit of the community mc
CLIENTS = ("directus",)


def clients(ctx: Context) -> list[str]:
    return [c for c in CLIENTS if c in ctx.enabled]


def buckets(ctx: Context) -> list[Bucket]:
    """The buckets the provision hook creates, each private, with the policy of the one client
    user that may use it (the plan's ``buckets``, rendered into ``buckets.json`` and applied by
    ``provision.sh``)."""
    layout = []
    if "directus" in ctx.enabled:
        layout.append(
            Bucket(
                name="uploads",
                purpose="files uploaded through Directus",
                public=False,
                user="directus",
                policy={
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "ListUploads",
                            "Effect": "Allow",
                            "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
                            "Resource": ["arn:aws:s3:::uploads"],
                        },
                        {
                            "Sid": "ObjectsInUploads",
                            "Effect": "Allow",
                            "Action": [
                                "s3:AbortMultipartUpload",
                                "s3:DeleteObject",
                                "s3:GetObject",
                                "s3:ListMultipartUploadParts",
                                "s3:PutObject",
                            ],
                            "Resource": ["arn:aws:s3:::uploads/*"],
                        },
                    ],
                },
            )
        )
    return layout


def secrets(ctx: Context) -> list[Secret]:
    return [
        ctx.secret("minio", "root_user", "username", ("minio",), "MinIO root user name", length=16),
        ctx.secret("minio", "root_password", "password", ("minio",), "MinIO root password", length=40),
        *(
            secret
            for client in clients(ctx)
            for secret in (
                ctx.secret("minio", f"{client}_access_key", "username", ("minio", client), f"MinIO access key of {client}", length=20, client=client),
                ctx.secret("minio", f"{client}_secret_key", "password", ("minio", client), f"MinIO secret key of {client}", length=40, client=client),
            )
        ),
    ]


def probe(ctx: Context, kind: str):
    """The official image ships ``mc`` and no curl; the local image ships curl."""
    if ctx.stack.image_source("minio") == "registry":
        return check("CMD", "mc", "ready", "local", interval=5) if kind == "ready" else check("CMD", "mc", "ping", "-c", "1", "local", interval=5)
    return check("CMD", "curl", "-fsS", "-o", "/dev/null", f"http://127.0.0.1:{PORT}/minio/health/{kind}", interval=5)


def service(ctx: Context) -> Service:
    return ctx.service(
        COMPONENT,
        command=("minio", "server", "/data", "--address", f":{PORT}"),
        stop=Stop(signal="SIGTERM", timeout_s=30, reason="finishes in-flight requests and closes its drive cleanly"),
        environment={
            "MINIO_ROOT_USER_FILE": ctx.secret_file("minio_root_user"),
            "MINIO_ROOT_PASSWORD_FILE": ctx.secret_file("minio_root_password"),
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "MINIO_CALLHOME_ENABLE": "off",
            "MINIO_BROWSER_REDIRECT": "off",
        },
        volumes=(VolumeMount(volume="minio-data", target="/data"),),
        config_templates=("minio/buckets.json.j2", "minio/provision.sh.j2"),
        hooks=(
            Hook(
                kind="exec",
                stage="ready",
                command=("sh", "/etc/ccoas/minio/provision.sh"),
                description="create the buckets and a least-privilege user per client (idempotent)",
            ),
        ),
        healthcheck=probe(ctx, "ready"),
        liveness=probe(ctx, "live"),
    )


COMPONENT = Component(
    name="minio",
    summary="MinIO: S3-compatible object storage, console off",
    uid=1000,
    gid=1000,
    ports=(PORT,),  # the console is off (MINIO_BROWSER=off): 9001 never listens
    networks=("edge",),
    registry_image="quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z@sha256:14cea493d9a34af32f524e538b8346cf79f3321eff8e708c1e2960462bd8936e",
    registry_digest_source=(
        "a public repository's check script pinning "
        "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z@<this digest> (public code index, 2026-12-01)"
    ),
    upstream={"local": "MinIO community, last commit 2026-02-12 (Go module)", "registry": "MinIO RELEASE.2025-09-07T16-13-09Z"},
    recipe=Recipe(
        containerfile="minio/Containerfile.j2",
        artifacts=(
            Artifact(kind="go", spec=f"github.com/minio/minio@{RELEASE}", binary="minio"),
            Artifact(kind="go", spec=f"github.com/minio/mc@{MC_RELEASE}", binary="mc"),
        ),
    ),
    default_limits={"memory": "1Gi", "cpus": 1.0, "pids": 512},
    declare_secrets=secrets,
    declare_service=service,
    declare_buckets=buckets,
    requires=("vault",),
)

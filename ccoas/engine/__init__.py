"""Engines apply a plan to a host. ``local`` drives the Docker Engine API (rootless Podman or
Docker) directly; ``pulumi`` runs the same plan as pulumi-docker resources."""

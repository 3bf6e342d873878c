"""Engines apply a plan to a host. ``local`` drives the Docker Engine API (rootless Podman or
Docker) directly, as observe (:mod:`.observed`) → diff (:mod:`.diff`, pure) → apply
(:mod:`.local`); ``pulumi`` (:mod:`ccoas.pulumi_engine`) runs the same plan as pulumi-docker
resources. Both run the steps that are not resources through :mod:`ccoas.steps` on a
:class:`.runtime.Runtime`."""

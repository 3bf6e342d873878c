"""The Pulumi program's entry when the Pulumi CLI runs it (``pulumi up`` next to ``Pulumi.yaml``).

``ccoas up --engine pulumi`` does not come here: it runs the same :func:`declare` inline
through the Automation API (:mod:`ccoas.pulumi_engine`). This entry is for Pulumi users:

- ``ccoas:stackFile`` (or ``CCOAS_STACK_FILE``): the stack file, relative to the project;
- ``ccoas:name`` (or ``CCOAS_NAME``): optional stack-name override (ephemeral stacks);
- ``ccoas:dockerHost`` (or ``DOCKER_HOST``): the engine socket; default: the engine user's
  rootless socket from the host layout (``CCOAS_ENGINE_USER``, ``CCOAS_STATE_DIR``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pulumi

from ccoas.errors import CcoasError


def setting(config: pulumi.Config, key: str, env: str) -> str | None:
    return config.get(key) or os.environ.get(env) or None


def main() -> None:
    from ccoas.host import host_layout
    from ccoas.planner import build_plan, load_stack
    from ccoas.pulumi_program import declare
    from ccoas.state import stack_paths

    config = pulumi.Config("ccoas")
    stack_file = setting(config, "stackFile", "CCOAS_STACK_FILE")
    if stack_file is None:
        raise pulumi.RunError("no stack file: `pulumi config set ccoas:stackFile stacks/dev.yaml` (or set CCOAS_STACK_FILE)")
    path = Path(stack_file)
    if not path.is_absolute():
        path = Path(pulumi.runtime.get_root_directory()) / path
    try:
        plan = build_plan(load_stack(path), name=setting(config, "name", "CCOAS_NAME"))
        layout = host_layout()
        docker_host = setting(config, "dockerHost", "DOCKER_HOST") or layout.base_url
        paths = stack_paths(layout.state_root, layout.runtime_dir, plan.stack)
    except CcoasError as exc:
        raise pulumi.RunError(str(exc)) from None
    declare(plan, paths, docker_host)


if __name__ == "__main__":  # the Pulumi language host runs this file as __main__
    main()

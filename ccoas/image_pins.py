"""The stack's image pins as one table, for review: per component, the upstream version its local
recipe builds, the registry image it pins (by digest) and where that digest was seen.

Everything comes from the plan (:attr:`ccoas.plan.Image.upstream` and :attr:`~ccoas.plan.Image.registry`),
whichever image source the stack uses, so the table reads the same for a local stack and a
registry one; ``ccoas images list`` prints it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ccoas.plan import Plan

NONE = "-"


@dataclass(frozen=True)
class ImagePin:
    component: str
    source: str
    """The image source this stack uses for the component (``local``, ``registry``, ``bundle``)."""
    ref: str
    """The image ``up`` runs for this stack."""
    local_upstream: str
    """What the local recipe builds (``-`` when the component has no recipe)."""
    registry_ref: str
    """The registry image pinned by digest (``-`` when there is none)."""
    registry_upstream: str
    digest_source: str
    """Where the registry digest was seen."""
    note: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def image_pins(plan: Plan) -> list[ImagePin]:
    """One row per service of ``plan``, in start order."""
    rows = []
    for service in plan.services:
        image = service.image
        pin = image.registry
        rows.append(
            ImagePin(
                component=service.name,
                source=image.source,
                ref=image.ref,
                local_upstream=image.upstream.get("local", NONE),
                registry_ref=pin.ref if pin else NONE,
                registry_upstream=pin.upstream if pin else NONE,
                digest_source=pin.digest_source if pin else NONE,
                note=pin.note if pin else "",
            )
        )
    return rows

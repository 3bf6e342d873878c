"""ccoas: the CC-OAS open stack as code.

A stack file is validated into one plan (:mod:`ccoas.plan`); every consumer
(renderer, local engine, Pulumi program, compose export, compliance checks)
translates that plan and never re-derives a setting.
"""

__version__ = "0.1.0"

"""Secrets by reference, per org: an org's configuration names a secret, and only the operator gives it a value.

The operator sets the values as environment variables under each org's prefix (`ACME_WEBHOOK_SECRET`,
`ACME_N8N_TOKEN` for org acme). `SecretResolver.resolve(org, name)` reads one only when the name is the org's own
(engine/boundaries.py: the org's prefix, not a longer org's prefix, not one of the server's variables). The loader
already refuses such names at the file and line; this is the same rule again at the moment of use, for a
configuration that reached an executor some other way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from engine.boundaries import secret_problem


class SecretRefused(Exception):
    """A secret an org may not use, or one the operator has not set; the message says which and why."""


class SecretResolver:
    """Resolves (org, name) → value from the operator's environment, within the org's own prefix only.

    `orgs` lists every org known to the process (active or not): a name under a longer org's prefix
    (`ACME_X_TOKEN` while org `acme_x` exists) is that org's, never acme's.
    """

    def __init__(self, env: Mapping[str, str] | None = None, orgs: Callable[[], Iterable[str]] = lambda: ()) -> None:
        self.env = os.environ if env is None else env
        self.orgs = orgs

    def problem(self, org: str, name: str) -> str | None:
        """Why `org` may not use `name`, or None."""
        return secret_problem(org, name, self.orgs())

    def resolve(self, org: str, name: str, *, field: str) -> str:
        """The value of secret `name` for `org`, named in the config at `field`; `SecretRefused` when the name is
        not the org's or the operator has not set it."""
        problem = self.problem(org, name)
        if problem is not None:
            raise SecretRefused(f"{field} of org '{org}': secret refused: {problem}")
        value = self.env.get(name)
        if not value:
            raise SecretRefused(f"{field} of org '{org}' names the secret {name}, which the operator has not set")
        return value

    def values(self, org: str, name: str, *, field: str) -> list[str]:
        """The comma-separated values of a secret (several during a rotation), empty when it is not set; refused
        names raise `SecretRefused`."""
        problem = self.problem(org, name)
        if problem is not None:
            raise SecretRefused(f"{field} of org '{org}': secret refused: {problem}")
        return [s.strip() for s in self.env.get(name, "").split(",") if s.strip()]

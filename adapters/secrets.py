"""Secrets by reference, per org: an org's configuration names a secret, and only the operator gives it a value.

The operator sets the values as environment variables under each org's prefix (`ACME_WEBHOOK_SECRET`,
`ACME_N8N_TOKEN` for org acme). `SecretResolver.resolve(org, name)` reads one only when the name is the org's own
(engine/boundaries.py: the org's prefix, not a longer org's prefix, not one of the server's variables). The loader
already refuses names outside the org's prefix at the file and line; this is the same rule again at the moment of
use, for a configuration that reached an executor some other way. A name under a longer org's prefix (`ACME_X_…`
while org `acme_x` exists) is no finding and resolves as unset, so that nothing tells acme that acme_x exists.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping

from engine.boundaries import secret_owner, secret_problem

log = logging.getLogger("astralis.secrets")


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

    def _check(self, org: str, name: str, field: str) -> bool:
        """False when `name` falls under another org's longer prefix: refused as if unset, so the tenant learns
        nothing of which orgs exist (the operator's log says why). `SecretRefused` for any other refused name."""
        if (problem := secret_problem(org, name)) is not None:
            raise SecretRefused(f"{field} of org '{org}': secret refused: {problem}")
        if secret_owner(name, [*self.orgs(), org]) != org:
            log.warning("%s of org '%s' names %s, which is under another org's prefix: refused as unset",
                        field, org, name, extra={"org": org})
            return False
        return True

    def resolve(self, org: str, name: str, *, field: str) -> str:
        """The value of secret `name` for `org`, named in the config at `field`; `SecretRefused` when the name is
        not the org's or the operator has not set it."""
        value = self.env.get(name) if self._check(org, name, field) else None
        if not value:
            raise SecretRefused(f"{field} of org '{org}' names the secret {name}, which the operator has not set")
        return value

    def values(self, org: str, name: str, *, field: str) -> list[str]:
        """The comma-separated values of a secret (several during a rotation), empty when it is not set (or under
        another org's prefix); names outside the org's prefix raise `SecretRefused`."""
        if not self._check(org, name, field):
            return []
        return [s.strip() for s in self.env.get(name, "").split(",") if s.strip()]

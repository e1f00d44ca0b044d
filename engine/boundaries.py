"""What an org's configuration may point at outside itself: which secret names it may use, and which network
addresses are not public.

Both are tenant input (an org admin edits its policy and org.yaml through the API), so both are checked here as
pure rules: the loader reports a breach as a finding at its file and line, and the adapters apply the same rules
again when they resolve a secret or open a connection (adapters/secrets.py, adapters/egress.py).

Secrets: a name is an environment variable under the org's own prefix, `<ORG>_<NAME>` (the org id upper-cased,
every other character than a letter or digit turned into `_`): `ACME_WEBHOOK_SECRET` for acme. Nothing else is
reachable: not another org's prefix (when org `acme_x` exists, `ACME_X_TOKEN` is its secret, not acme's), not the
server's own variables (a deny-list, in case an org id collides with one: an org called `openai` still cannot
name `OPENAI_API_KEY`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Protocol

from engine.config import OrgConfig, Policy
from engine.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SECRET_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
DENIED_PREFIXES = ("OPENAI_", "ANTHROPIC_", "AGENT_", "ASTRALIS_", "DATABASE_", "REDIS_", "POSTGRES_", "PG",
                   "AWS_", "AZURE_", "GOOGLE_", "GCP_", "GITHUB_", "CI_", "LD_", "PYTHON", "SSL_", "REQUESTS_",
                   "CURL_", "HTTP_", "HTTPS_", "SSH_", "GPG_", "XDG_", "DOCKER_", "KUBERNETES_")
"""The server's own variables, provider keys and the platform's: never a tenant's secret, whatever its org id."""
DENIED_NAMES = frozenset({"PATH", "HOME", "USER", "SHELL", "PWD", "HOSTNAME", "DATABASE_URL", "REDIS_URL",
                          "NO_PROXY", "ALL_PROXY", "HTTP_PROXY", "HTTPS_PROXY", "TMPDIR"})


def org_prefix(org: str) -> str:
    """The prefix of org `org`'s secrets: `acme` → `ACME_`, `acme-x` → `ACME_X_`."""
    return re.sub(r"[^A-Z0-9]", "_", org.upper()) + "_"


def secret_owner(name: str, orgs: Iterable[str]) -> str | None:
    """The org whose prefix is the longest one `name` starts with (None when no org's prefix fits)."""
    best: tuple[int, str] | None = None
    for org in orgs:
        prefix = org_prefix(org)
        if name.startswith(prefix) and len(name) > len(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), org)
    return best[1] if best else None


def secret_problem(org: str, name: str, orgs: Iterable[str] = ()) -> str | None:
    """Why org `org` may not use the secret `name` (None when it may). `orgs` are the other orgs known: a name
    that also fits a longer org's prefix belongs to that org."""
    prefix = org_prefix(org)
    if not SECRET_NAME.match(name):
        return f"'{name}' is not a secret name (capital letters, digits and '_', like {prefix}WEBHOOK_SECRET)"
    if name in DENIED_NAMES or name.startswith(DENIED_PREFIXES):
        return f"'{name}' is one of the server's own variables, never an org's secret"
    if not name.startswith(prefix) or len(name) == len(prefix):
        return (f"'{name}' is outside the secrets of org '{org}': names must start with {prefix} "
                f"(for example {prefix}WEBHOOK_SECRET), which the operator sets for this org")
    owner = secret_owner(name, {*orgs, org})
    if owner != org:
        return f"'{name}' belongs to org '{owner}' (prefix {org_prefix(str(owner))}), not to org '{org}'"
    return None


# --------------------------------------------------------------------------- addresses

CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, IPv4-compatible, 6to4, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # ::a.b.c.d, the deprecated IPv4-compatible form
        return ipaddress.IPv4Address(int(ip))
    return None


def address_kind(ip: IPAddress) -> str | None:
    """What makes `ip` a non-public destination ('loopback', 'private', 'link-local', ...), None when it is a
    public unicast address. An IPv6 form of an IPv4 address is judged by the IPv4 address."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        kind = address_kind(inner)
        return f"{kind} (as {inner})" if kind else None
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return "shared address space (CGNAT)"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "not globally routable"
    return None


def parse_ip(host: str) -> IPAddress | None:
    """`host` as an IP address ('[::1]' and zone ids allowed), None when it is a name."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


# --------------------------------------------------------------------------- findings for the loader

class _Doc(Protocol):
    """A parsed file that knows the line of each node (engine.loader.Located)."""

    @property
    def path(self) -> str: ...

    @property
    def lines(self) -> dict[tuple[str | int, ...], int]: ...

    def line(self, loc: Iterable[str | int]) -> int: ...


def secret_fields(org: OrgConfig, policy: Policy) -> list[tuple[str, tuple[str | int, ...], str]]:
    """Every secret name the org's files use: (file kind 'org' or 'policy', where, name)."""
    out: list[tuple[str, tuple[str | int, ...], str]] = []
    if org.webhook_secret_env:
        out.append(("org", ("webhook_secret_env",), org.webhook_secret_env))
    for name, automation in policy.automations.items():
        if automation.auth_env:
            out.append(("policy", ("automations", name, "auth_env"), automation.auth_env))
    email = policy.notifications.email
    if email is not None:
        for key in ("username_env", "password_env"):
            value = getattr(email, key)
            if value:
                out.append(("policy", ("notifications", "email", key), value))
    if policy.notifications.webhook is not None:
        out.append(("policy", ("notifications", "webhook", "secret_env"), policy.notifications.webhook.secret_env))
    return out


def _locate(docs: Sequence[_Doc], loc: tuple[str | int, ...]) -> tuple[str, int]:
    """The first file of a policy chain (the org's own first) that writes `loc`, and its line there."""
    for doc in docs:
        if loc in doc.lines:
            return doc.path, doc.lines[loc]
    return (docs[0].path, docs[0].line(loc)) if docs else ("policy", 0)


def boundary_errors(org: OrgConfig, org_doc: _Doc, policy: Policy, policy_docs: Sequence[_Doc],
                    orgs: Iterable[str] = ()) -> list[ConfigError]:
    """A `forbidden_secret` finding, at its file and line, for each secret name outside the org's own prefix or
    among the server's variables. Destinations are not judged here: whether an address may be
    reached is the operator's allow-list, checked when the connection is made (adapters/egress.py)."""
    # Names under another org's longer prefix are not findings here: a finding (or its absence) would tell the
    # tenant which org ids begin like its own. They are refused when resolved, exactly as a secret the operator
    # has not set (adapters/secrets.py), and the operator's log says why.
    del orgs
    errors: list[ConfigError] = []
    for kind, loc, name in secret_fields(org, policy):
        problem = secret_problem(org.org, name)
        if problem is None:
            continue
        path, line = (org_doc.path, org_doc.line(loc)) if kind == "org" else _locate(policy_docs, loc)
        field = ".".join(str(x) for x in loc)
        errors.append(ConfigError(path, line, "forbidden_secret", f"{field}: {problem}"))
    return errors

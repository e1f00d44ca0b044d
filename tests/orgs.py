"""A new org made from an existing org's folder, for tests that need more orgs than the shipped ones."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from engine.boundaries import org_prefix


def copy_org(source: Path, dest: Path, org: str) -> Path:
    """Copy the org folder `source` to `dest` as org `org`: its id and the names of its secrets moved to the new
    org's prefix (`ACME_WEBHOOK_SECRET` → `BETA_WEBHOOK_SECRET`), since an org may name only its own secrets
    (forbidden_secret). org.yaml is written last and atomically, so a file watcher never sees the copy under the
    old id."""
    old = (source / "org.yaml").read_text(encoding="utf-8")
    old_org = next(line.split(":", 1)[1].strip() for line in old.splitlines() if line.startswith("org:"))
    text = old.replace(f"org: {old_org}\n", f"org: {org}\n", 1).replace(org_prefix(old_org), org_prefix(org))
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("org.yaml"))
    tmp = dest / ".org.yaml.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, dest / "org.yaml")
    return dest

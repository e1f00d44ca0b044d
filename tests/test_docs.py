"""Every shell block in README.md and docs/ runs as pasted (issue 16, item 12): the `sh` blocks of each page run in
order in one bash session, against the embedded defaults (a SQLite file, the in-process queue, no LLM), in a
scratch folder holding the example orgs, with the installed `astralis` on PATH. A block that cannot run here says
why in a `<!-- not run: … -->` line above it. Also: every link between the pages leads to a page that exists."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- not run: [^>]*-->\n)?```sh\n(.*?)```", re.S)


def blocks(page: Path) -> list[str]:
    """The page's shell blocks meant to run, in order."""
    return [m.group(2) for m in BLOCK.finditer(page.read_text(encoding="utf-8")) if not m.group(1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_pages_have_blocks_to_run() -> None:
    assert len(blocks(ROOT / "README.md")) >= 3 and blocks(ROOT / "docs" / "deployment.md")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: p.name)
def test_every_shell_block_runs_as_pasted(page: Path, tmp_path: Path) -> None:
    for name in ("rulesets", "policies"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "cases").symlink_to(ROOT / "tests" / "cases")
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + "\n".join(blocks(page))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ASTRALIS_", "AGENT_", "OPENAI_", "ANTHROPIC_", "DATABASE_URL", "REDIS_URL"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", ASTRALIS_PORT=str(free_port()),
               ASTRALIS_LOG_LEVEL="WARNING")
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200,
                       check=False)
    assert r.returncode == 0, f"{page.name}:\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr
    if page.name == "README.md":
        assert re.search(r'"status": ?"REQUIRES_APPROVAL"', r.stdout)  # the tour's email waits for a person, as it says
        assert "ok   acme" in r.stdout and "sign in at http://localhost:" in r.stdout


def test_links_between_the_pages_lead_somewhere() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert broken == []

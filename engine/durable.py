"""The one module that touches durable-rules.

We call its C extension (`durable_rules_engine`) directly rather than through `durable.engine.Host`:
no timer threads, no action dispatch on foreign threads, and exact all-match semantics. For one
event we `assert_fact`, drain every fired action, then always `retract_fact`, so nothing carries
over to the next event. Batch calls are never used (they drop actions when one message is
unmatched). Rulesets are never deleted (deleting leaks and has crashed); each compiled revision is
created once under a unique name and shared by every identical revision.

Measured limits (RECIPES.md) are enforced by the compiler in `engine.rules`; a new definition is
first created in a throwaway subprocess with a timeout (`probe`), because one over a hard limit
hangs the engine while holding the GIL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import threading
from typing import Any

import durable_rules_engine as _dre

MAX_DISTINCT_CONDITIONS = 500  # ~512 hangs create_ruleset/assert; keep a margin
MAX_SIMULTANEOUS = 64  # conditions one event may satisfy at once (error 303 beyond)
MAX_PROPERTIES = 250  # per event; the engine's limit is 255
MAX_RULES = 4096

_ERROR_TOO_MANY_SATISFIED = 303


class EngineError(Exception):
    """The engine refused an event (the caller falls back to the Python evaluator)."""


class EngineLimit(EngineError):
    """The engine refused an event because it satisfies more conditions than it can hold at once."""


class DurableRuleset:
    """One compiled definition loaded in the engine, matched one event at a time under a lock."""

    def __init__(self, name: str, definition: dict[str, Any]) -> None:
        self.name = name
        self._handle = _dre.create_ruleset(name, json.dumps(definition, ensure_ascii=False))
        self._lock = threading.Lock()
        self._seq = 0

    def match(self, fact: dict[str, Any]) -> list[str]:
        """Names of every rule whose conditions `fact` satisfies (order as the engine fires them)."""
        with self._lock:
            self._seq += 1
            fact = {**fact, "sid": "0", "id": f"e{self._seq}"}
            try:
                payload = json.dumps(fact, ensure_ascii=False, allow_nan=False)
            except ValueError as exc:
                raise EngineError(str(exc)) from None
            fired: list[str] = []
            try:
                result = _dre.assert_fact(self._handle, payload)
            except _dre.error as exc:
                self._retract(payload)
                if str(_ERROR_TOO_MANY_SATISFIED) in str(exc):
                    raise EngineLimit(str(exc)) from None
                raise EngineError(str(exc)) from None
            try:
                if result[0] == 0:
                    state_handle = result[1]
                    started = _dre.start_action_for_state(self._handle, state_handle)
                    message = started[1] if started else None
                    while message:
                        fired.extend(json.loads(message).keys())
                        message = _dre.complete_and_start_action(self._handle, state_handle)
            finally:
                self._retract(payload)
            return fired

    def _retract(self, payload: str) -> None:
        with contextlib.suppress(_dre.error):  # not asserted (refused above): nothing to take back
            _dre.retract_fact(self._handle, payload)


_loaded: dict[str, DurableRuleset] = {}
_loaded_lock = threading.Lock()


def definition_hash(definition: dict[str, Any]) -> str:
    """A stable hash of a compiled definition, used to share identical revisions."""
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]


def load(prefix: str, definition: dict[str, Any]) -> DurableRuleset:
    """The engine ruleset for `definition`, created once per distinct definition (never re-registered)."""
    key = definition_hash(definition)
    with _loaded_lock:
        rs = _loaded.get(key)
        if rs is None:
            rs = DurableRuleset(f"{prefix}@{key}", definition)
            _loaded[key] = rs
        return rs


def loaded_count() -> int:
    """How many distinct rulesets this process holds (they are never freed; see module doc)."""
    return len(_loaded)


_PROBE = """
import json, sys
import durable_rules_engine as e
d = sys.stdin.read()
h = e.create_ruleset("probe", d)
e.assert_fact(h, json.dumps({"sid": "0", "id": "p1", "type": "probe"}))
print("ok")
"""

_probed: set[str] = set()


def probe(definition: dict[str, Any], timeout: float = 20.0) -> str | None:
    """Create `definition` in a throwaway subprocess; None if fine, else why it failed or hung."""
    key = definition_hash(definition)
    if key in _probed:
        return None
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], input=json.dumps(definition), text=True,
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"the rules engine did not finish compiling within {timeout:.0f} s (it hangs past its limits)"
    if proc.returncode != 0 or "ok" not in proc.stdout:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the rules engine refused the compiled rules: {last}"
    _probed.add(key)
    return None

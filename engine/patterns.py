"""Rule regular expressions (`text.regex`, `fields[].matches`): compiled with RE2, a linear-time engine.

A rule's regex is tenant input (an org admin writes it through the API), and the text it is searched in
comes from senders. Python's `re` backtracks: `(a+)+$` on a long line takes minutes. RE2 (the engine OPA
and Go use) runs in time linear in the text, whatever the pattern, so one org's regex can never stall the
service. Its syntax is Python's minus backreferences and lookaround (`(?=`, `(?!`, `(?<=`, `(?<!`, `\\1`),
with `\\b`, `\\w`, `\\d`, `\\s` meaning ASCII classes, and `$` matching only at the very end of the text.
Patterns are case-insensitive, as before. A pattern that does not compile, or is larger than the limits
below, is a `ConfigError` `invalid_regex` at its line (the loader reports it).
"""

from __future__ import annotations

from typing import Any

import re2

MAX_PATTERN_CHARS = 2_000
"""Longest pattern accepted. The shipped rulesets' longest is 409 characters."""
MAX_PROGRAM_SIZE = 5_000
"""Largest compiled RE2 program (instructions). The shipped rulesets' largest is 778."""
MAX_MEM = 8 << 20
"""RE2's memory budget per pattern (its default, made explicit): the compiled program and the DFA cache. A
DFA that fills it falls back to RE2's NFA, still linear."""

_UNSUPPORTED = ("invalid perl operator: (?=", "invalid perl operator: (?!", "invalid perl operator: (?<",
                "invalid perl operator: (?P=", "invalid escape sequence: \\")


def _options() -> Any:
    opts = re2.Options()
    opts.case_sensitive = False
    opts.never_capture = True  # rules only ask whether it matches: no submatch work
    opts.log_errors = False  # the error is reported as a finding, not printed to stderr
    opts.max_mem = MAX_MEM
    return opts


_OPTIONS = _options()


class RegexError(ValueError):
    """A rule's regex RE2 refuses: bad syntax, a feature RE2 lacks, or over a size limit."""


class UserRegex:
    """One compiled rule regex: case-insensitive search, linear in the length of the text."""

    __slots__ = ("_rx", "pattern")

    def __init__(self, pattern: str, rx: Any) -> None:
        self.pattern = pattern
        self._rx = rx

    def search(self, text: str | bytes) -> bool:
        """Whether the pattern occurs anywhere in `text` (UTF-8 bytes are searched as they are: callers that
        search the same long text with many patterns encode it once)."""
        return self._rx.search(text) is not None

    def __repr__(self) -> str:
        return f"UserRegex({self.pattern!r})"


def compile_regex(pattern: str) -> UserRegex:
    """Compile a rule's regex with RE2, case-insensitive; `RegexError` saying why when RE2 refuses it."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RegexError(f"is {len(pattern)} characters long; at most {MAX_PATTERN_CHARS} are allowed")
    try:
        rx = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        if reason.startswith(_UNSUPPORTED):
            reason += (" (RE2, the linear-time engine rules use, has no lookahead, lookbehind or backreferences; "
                       "rewrite the pattern without them, or use the condition's any/all/none keywords)")
        elif "pattern too large" in reason:
            reason += f" (RE2's memory budget is {MAX_MEM >> 20} MiB per pattern)"
        raise RegexError(reason) from None
    if rx.programsize > MAX_PROGRAM_SIZE:
        raise RegexError(f"compiles to {rx.programsize} RE2 instructions; at most {MAX_PROGRAM_SIZE} are allowed "
                         "(shorten alternations and bounded repeats such as {m,n})")
    return UserRegex(pattern, rx)


__all__ = ["MAX_PATTERN_CHARS", "MAX_PROGRAM_SIZE", "RegexError", "UserRegex", "compile_regex"]

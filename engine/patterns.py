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

import re._parser as sre_parse
import time
import warnings
from itertools import pairwise
from typing import Any

import re2

MAX_PATTERN_CHARS = 2_000
"""Longest pattern accepted. The shipped rulesets' longest is 409 characters."""
MAX_PROGRAM_SIZE = 5_000
"""Largest compiled RE2 program (instructions). The shipped rulesets' largest is 778."""
MAX_MEM = 8 << 20
"""RE2's memory budget per pattern (its default, made explicit): the compiled program and the DFA cache. A
DFA that fills it falls back to RE2's NFA, still linear."""

MAX_COUNTED_RUN = 20
"""Most characters a pattern may count in a row (`[a-z ]{40}`, `.{0,50}`, `a[ab]{20}[ab]{20}`: 40; nested counts
multiply) unless the run follows, in its own sequence, a word (two literal characters or more) or an item that
always matches two characters or more (`\\b(call|meeting)\\b.{0,40}`). At the start of the pattern (unless `^`)
or of a group, or after one-character items, such a run makes RE2's DFA track up to 2^n positions at once; it
gives up and the search costs ~50 ms per 16 KiB instead of microseconds (`[a-z0-9 ]*a[a-z0-9 ]{40}#`: 51 ms). The
shipped rulesets count at most 50 characters, always after a group of words. A rule, not a proof: the per-event
budget below bounds what gets past it."""
REGEX_BUDGET_MS = 20.0
"""Time one event's rule regexes may take in all (`RegexBudget`). Patterns that pass `MAX_COUNTED_RUN` can still
be slow on a crafted text (`(ab|ba|aa|bb).{0,40}#`: 24 ms on 16 KiB of "ab "); once the budget is spent, the
remaining regexes of the event count as not matched and the trace says so."""

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


class RegexBudget:
    """One event's allowance of regex time: `search` runs a pattern while time remains and after that answers
    False without running it. An event therefore costs at most the budget plus one pattern."""

    __slots__ = ("budget", "run", "skipped", "spent")

    def __init__(self, budget_ms: float = REGEX_BUDGET_MS) -> None:
        self.budget = budget_ms / 1000
        self.spent = 0.0
        self.run = 0
        self.skipped = 0

    def search(self, rx: UserRegex, text: str | bytes) -> bool:
        """`rx.search(text)` while the budget lasts; False (not matched, not run) once it is spent."""
        if self.spent >= self.budget:
            self.skipped += 1
            return False
        t = time.perf_counter()
        try:
            return rx.search(text)
        finally:
            self.spent += time.perf_counter() - t
            self.run += 1

    @property
    def note(self) -> str | None:
        """What the trace records when patterns were skipped, else None."""
        if not self.skipped:
            return None
        return (f"regex budget exceeded after {self.run} patterns ({self.spent * 1000:.1f} ms; at most "
                f"{self.budget * 1000:g} ms per event): {self.skipped} more counted as not matched")


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
    run = _counted_run(pattern)
    if run is not None:
        raise RegexError(f"counts {run} characters in a row (such as [a-z]{{{run}}} or .{{0,{run}}}) without a word or "
                         "a group of two characters or more before them; at most "
                         f"{MAX_COUNTED_RUN} are allowed there (RE2's fast engine cannot search such a pattern and "
                         "falls back to one ~1,000 times slower): put a word before the count, as in "
                         "\\b(call|meeting)\\b.{0,40}, or count less")
    return UserRegex(pattern, rx)


def _counted_run(pattern: str) -> int | None:
    """The length of the first counted run of single characters over `MAX_COUNTED_RUN` that does not follow an
    item of two characters or more (see `MAX_COUNTED_RUN`), or None. Read with Python's regex parser, whose syntax
    covers RE2's for these constructs; a pattern it cannot read is left to RE2 and the per-event budget."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = sre_parse.parse(pattern)
    except Exception:
        return None
    return _sequence_run(tree, anchored=True)


def _min_width(seq: Any, nodes: list[Any]) -> int:
    return int(sre_parse.SubPattern(seq.state, nodes).getwidth()[0])


def _char_span(seq: Any, node: Any) -> int | None:
    """How many characters `node` counts when it is made of single-character items only (a class, `.`, a
    repetition or group of such items; a lone literal counts 0), else None."""
    op, av = node
    if op is sre_parse.LITERAL:
        return 0
    if op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, getattr(sre_parse, "POSSESSIVE_REPEAT", None)):
        lo, hi, sub = av
        spans = [_char_span(sub, n) for n in sub]
        if any(x is None for x in spans):
            return None
        # a repeated literal counts too ("x{25}"): the count, not the item, is what the DFA tracks
        inner = max(1, sum(x or 0 for x in spans))
        return (lo if hi == sre_parse.MAXREPEAT else hi) * inner
    if op is sre_parse.SUBPATTERN:
        sub = av[-1]
        spans = [_char_span(sub, n) for n in sub]
        ops = [n[0] for n in sub]
        word = any(a is sre_parse.LITERAL and b is sre_parse.LITERAL for a, b in pairwise(ops))
        return None if word or any(x is None for x in spans) else sum(x or 0 for x in spans)
    return 1 if sre_parse.SubPattern(seq.state, [node]).getwidth() == (1, 1) else None


def _sequence_run(seq: Any, *, anchored: bool) -> int | None:
    """`_counted_run` for one sequence of items and, recursively, the sequences inside its other groups."""
    nodes = list(seq)
    after_word = anchored and bool(nodes) and nodes[0] == (sre_parse.AT, sre_parse.AT_BEGINNING)
    run = 0
    literals = 0  # consecutive literal characters just before: two or more are a word
    for node in nodes:
        op, av = node
        if op is sre_parse.AT:
            continue
        if op is sre_parse.LITERAL:
            literals += 1
            if literals >= 2:
                run, after_word = 0, True
            continue
        literals = 0
        span = _char_span(seq, node)
        if span is not None:
            run += span
            if run > MAX_COUNTED_RUN and not after_word:
                return run
            continue
        run = 0
        after_word = _min_width(seq, [node]) >= 2
        children: list[Any] = []
        if op is sre_parse.SUBPATTERN:
            children = [av[-1]]
        elif op is sre_parse.BRANCH:
            children = list(av[1])
        elif op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT):
            children = [av[2]]
        for child in children:
            found = _sequence_run(child, anchored=False)
            if found is not None:
                return found
    return None


__all__ = ["MAX_COUNTED_RUN", "MAX_PATTERN_CHARS", "MAX_PROGRAM_SIZE", "REGEX_BUDGET_MS", "RegexBudget", "RegexError",
           "UserRegex", "compile_regex"]

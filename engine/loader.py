"""Load an org's YAML (org.yaml, rulesets, policy) and validate it in stages.

Stages, each stopping the file at its first failing stage: YAML syntax → JSON Schema → pydantic
models → references across files (pipelines, users, roles, stages, duplicate ids, regexes).
Every problem is a `ConfigError` located by file and line.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

import jsonschema
import yaml
from pydantic import BaseModel, ValidationError

from engine.boundaries import boundary_errors
from engine.config import DecisionType, OrgConfig, Policy, Rule, Ruleset, Threshold, compile_user_regex
from engine.errors import ConfigError, ConfigInvalid
from engine.learning import ModelError, OrgModel, load_model
from engine.patterns import RegexError
from engine.templates import config_errors as template_errors

M = TypeVar("M", bound=BaseModel)

# YAML 1.1's sexagesimal numbers (`1:30` is 90, `59:59:…:59` a number built by repeated big-number
# multiplication) are resolved as YAML 1.2 does: not at all, so such a scalar is a string (`per_minute: 1:30` is
# then a schema finding, and a time written `9:00` stays the text "9:00"). Every other implicit type is YAML 1.1's.
_INT = re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


def _yaml_12_numbers(base: Any) -> Any:
    resolvers = {first: [(tag, {_INT_TAG: _INT, _FLOAT_TAG: _FLOAT}.get(tag, regexp)) for tag, regexp in pairs]
                 for first, pairs in base.yaml_implicit_resolvers.items()}
    return type(f"Bounded{base.__name__}", (base,), {"yaml_implicit_resolvers": resolvers})


_SafeLoader = _yaml_12_numbers(getattr(yaml, "CSafeLoader", yaml.SafeLoader))
_PySafeLoader = _yaml_12_numbers(yaml.SafeLoader)

ORG_FILE = "org.yaml"
DEFAULT_POLICY = "default"

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Located:
    """A parsed YAML document with the line of every node, for error messages."""

    path: str
    data: Any
    lines: dict[Path_, int]
    text: str = ""
    """The text that was parsed: the revision hash is taken from it, never from a second read of the file."""

    def line(self, loc: Iterable[str | int]) -> int:
        """The line of the deepest node of `loc` that exists in the file (1 when unknown)."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), 1)


@dataclass(frozen=True)
class RuleRef:
    """Where a rule lives: its ruleset, file and line."""

    ruleset: str
    rule: Rule
    path: str
    line: int
    shown: str = ""
    """The file as the org knows it (`rulesets/acme/intake.yaml`), wherever the operator keeps the folder: what
    decision traces and explanations show, never a host path (`path` is the real one, for the operator)."""

    @property
    def key(self) -> str:
        """`ruleset/rule-id`, the name decisions report."""
        return f"{self.ruleset}/{self.rule.id}"

    @property
    def at(self) -> str:
        """`file:line` of the rule as decision traces show it: `rulesets/acme/intake.yaml:14`."""
        return f"{self.shown or self.path}:{self.line}"


@dataclass(frozen=True)
class OrgBundle:
    """Everything validated for one org at one revision."""

    org: OrgConfig
    policy: Policy
    rules: tuple[RuleRef, ...]
    revision: str
    files: tuple[str, ...]
    warnings: tuple[ConfigError, ...] = field(default=())
    model: OrgModel | None = None
    """The org model (`rulesets/<org>/model/`), whose content hash is part of `revision`."""


# --------------------------------------------------------------------------- YAML with lines

def _walk(node: yaml.Node, loc: Path_, out: dict[Path_, int]) -> None:
    out[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark.line)
            out[(*loc, k)] = key.start_mark.line + 1
            _walk(value, (*loc, k), out)
            out[(*loc, k)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*loc, i), out)


def _load(text: str, loader_cls: Any) -> tuple[yaml.Node | None, Any]:
    loader = loader_cls(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def _unconstructible_line(text: str) -> int:
    """The line of the first scalar (in document order) that cannot be built, e.g. a timestamp with a bad offset;
    1 when none is found on its own (the text was parsed once already: this walk is within the same limits)."""
    loader = _SafeLoader(text)
    try:
        root = loader.get_single_node()
        stack: list[yaml.Node] = [root] if root is not None else []
        while stack:
            node = stack.pop()
            if isinstance(node, yaml.ScalarNode):
                try:
                    loader.construct_object(node, deep=True)
                except Exception:  # whatever it raises, this is the scalar to point at
                    return int(node.start_mark.line) + 1
            elif isinstance(node, yaml.MappingNode):
                stack.extend(reversed([n for pair in node.value for n in pair]))
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(reversed(node.value))
    except Exception:  # a best-effort line; the finding is reported either way
        return 1
    finally:
        loader.dispose()
    return 1


def _syntax_error(exc: yaml.YAMLError, path: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc)
    return ConfigError(path, line, "yaml_syntax", str(problem).strip())


MAX_YAML_BYTES = 256 * 1024
"""Largest YAML file the loader parses (UTF-8 bytes). The largest shipped file is 21 KB."""
MAX_YAML_DEPTH = 32
"""Deepest nesting of mappings and sequences accepted. The shipped files nest 7 deep."""
MAX_YAML_NODES = 20_000
"""Most scalars, mappings and sequences in one document. The largest shipped file has about 2,000."""
MAX_YAML_NUMBER_CHARS = 100
"""Longest number (int or float, as written) accepted: Python refuses ints past 4,300 digits, and converting long
ones is quadratic."""


def _line(event: yaml.Event) -> int:
    return event.start_mark.line + 1 if event.start_mark is not None else 1


def yaml_limits(text: str, path: str) -> ConfigError | None:
    """The first limit a YAML text breaks, checked before anything is built from it: its size, then, in one
    streaming pass of the parser's events, the first alias (`*name`, refused: expanding aliases is how a few
    hundred bytes become gigabytes) and the first node nested deeper than `MAX_YAML_DEPTH`. None when within
    limits, and for a syntax error too (the parse that follows reports it, in better words)."""
    size = len(text.encode("utf-8", "surrogatepass")) if len(text) * 4 > MAX_YAML_BYTES else len(text)
    if size > MAX_YAML_BYTES:
        return ConfigError(path, 1, "yaml_too_large",
                           f"the file is {size} bytes; at most {MAX_YAML_BYTES} are accepted (split the rules into "
                           "several files)")
    depth = nodes = 0
    try:
        for event in yaml.parse(text, Loader=_SafeLoader):
            if isinstance(event, (yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                nodes += 1
                if nodes > MAX_YAML_NODES:
                    return ConfigError(path, _line(event), "yaml_too_many_nodes",
                                       f"the document has more than {MAX_YAML_NODES} values (scalars, mappings and "
                                       "lists); split it into several files")
            if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_YAML_NUMBER_CHARS and (
                    event.tag in (_INT_TAG, _FLOAT_TAG) or (event.implicit[0] and (
                        _INT.match(event.value) or _FLOAT.match(event.value)))):
                return ConfigError(path, _line(event), "yaml_number",
                                   f"a number of {len(event.value)} characters; at most {MAX_YAML_NUMBER_CHARS} are "
                                   "accepted (quote it if it is meant as text)")
            if isinstance(event, yaml.AliasEvent):
                return ConfigError(path, _line(event), "yaml_alias",
                                   f"alias '*{event.anchor}' refused: YAML aliases and anchors are not accepted "
                                   "(write the value out where it is needed)")
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    return ConfigError(path, _line(event), "yaml_too_deep",
                                       f"mappings and lists nest more than {MAX_YAML_DEPTH} levels deep here")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError as exc:
        if "nesting depth" in str(exc):  # libyaml's own limit (1,000 flow levels), met while looking ahead
            return ConfigError(path, 1, "yaml_too_deep", f"mappings and lists nest more than {MAX_YAML_DEPTH} levels deep")
        return None
    except RecursionError:
        return ConfigError(path, 1, "yaml_too_deep", f"mappings and lists nest more than {MAX_YAML_DEPTH} levels deep")
    return None


def read_yaml(path: Path) -> Located | ConfigError:
    """Read and parse one file; a file that is not UTF-8 text is a `yaml_syntax` error, not a crash, and a file
    over `MAX_YAML_BYTES` is refused before it is read."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return ConfigError(str(path), 0, "missing_file", f"cannot read the file: {exc.strerror}")
    if size > MAX_YAML_BYTES:
        return ConfigError(str(path), 1, "yaml_too_large",
                           f"the file is {size} bytes; at most {MAX_YAML_BYTES} are accepted (split the rules into "
                           "several files)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        return ConfigError(str(path), line, "yaml_syntax", f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x})")
    return parse_yaml(text, str(path))


def parse_yaml(text: str, path: str) -> Located | ConfigError:
    """Parse one YAML document (safe loader) and map every node to its line, after `yaml_limits`: nothing is
    built from a text over a size, depth or alias limit."""
    refused = yaml_limits(text, path)
    if refused is not None:
        return refused
    try:
        try:
            node, data = _load(text, _SafeLoader)  # libyaml when available: the safe loader, in C
        except yaml.YAMLError:
            try:  # the pure-Python loader words syntax errors better; parsing a broken file twice is cheap
                node, data = _load(text, _PySafeLoader)
            except yaml.YAMLError as exc:
                return _syntax_error(exc, path)
            except RecursionError:  # a broken file nested too deep for the pure-Python parser's recursion
                return ConfigError(path, 1, "yaml_too_deep",
                                   f"mappings and lists nest more than {MAX_YAML_DEPTH} levels deep")
    except (ValueError, OverflowError, TypeError, ArithmeticError) as exc:
        # A scalar of a YAML type Python cannot hold: a timestamp with a -99:99 offset, a float out of range.
        return ConfigError(path, _unconstructible_line(text), "yaml_value",
                           f"a value here cannot be read as its YAML type ({type(exc).__name__}: {exc}); quote it "
                           "if it is meant as text")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return ConfigError(path, 1, "not_a_mapping", f"expected a mapping at the top level, got {type(data).__name__}")
    lines: dict[Path_, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return Located(path, data, lines, text)


# --------------------------------------------------------------------------- schema and models

@cache
def _validator(model: type[BaseModel]) -> jsonschema.protocols.Validator:
    schema = model.model_json_schema(by_alias=True)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def _fmt_loc(loc: Iterable[str | int]) -> str:
    parts: list[str] = []
    for p in loc:
        parts.append(f"[{p}]" if isinstance(p, int) else (f".{p}" if parts else str(p)))
    return "".join(parts) or "(top level)"


def check_schema(doc: Located, model: type[BaseModel], partial: bool = False) -> list[ConfigError]:
    """JSON Schema stage: structure, types, enums and patterns, each error at its line."""
    errors = []
    for err in sorted(_validator(model).iter_errors(doc.data), key=lambda e: list(map(str, e.absolute_path))):
        if partial and err.validator == "required" and not err.absolute_path:
            continue
        loc = tuple(err.absolute_path)
        at = loc
        msg = err.message
        if err.context:  # anyOf/oneOf ("X is not valid under any of the given schemas"): say which part failed
            # "… is not of type 'null'" (the optional branch) says nothing useful; the other branch does.
            useful = [e for e in err.context if not (e.validator == "type" and e.validator_value == "null")]
            if useful:
                msg = jsonschema.exceptions.best_match(useful).message
        if err.validator == "additionalProperties":
            allowed = err.schema.get("properties", {})
            extras = [k for k in err.instance if k not in allowed] if isinstance(err.instance, dict) else []
            if extras:
                at = (*loc, extras[0])  # the line of the unknown key itself
            msg = f"{msg}; allowed here: {', '.join(sorted(allowed))}"
        errors.append(ConfigError(doc.path, doc.line(at), "schema", f"{_fmt_loc(loc)}: {msg}"))
    return errors


def build_model(doc: Located, model: type[M], data: Any = None) -> M | list[ConfigError]:
    """Model stage: pydantic's own checks (value ranges, cross-field rules) with lines."""
    try:
        return model.model_validate(doc.data if data is None else data)
    except ValidationError as exc:
        out = []
        for e in exc.errors():
            loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("function-", "union["))))
            msg = e["msg"].removeprefix("Value error, ")
            out.append(ConfigError(doc.path, doc.line(loc), "invalid_value", f"{_fmt_loc(loc)}: {msg}"))
        return out


# --------------------------------------------------------------------------- policies

def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


ENV_OVERRIDES = ("AGENT_DEFAULT_PROVIDER", "AGENT_AUTO_EXECUTE_THRESHOLD", "AGENT_REQUIRE_APPROVAL_THRESHOLD")
"""The operator's policy overrides (DESIGN §7), each also read as ASTRALIS_<name without AGENT_> so that every
variable of the service can carry one prefix; the ASTRALIS_ spelling wins when both are set."""


def _env_overrides() -> dict[str, str]:
    out = {}
    for n in ENV_OVERRIDES:
        value = os.environ.get("ASTRALIS_" + n.removeprefix("AGENT_")) or os.environ.get(n)
        if value:
            out[n] = value
    return out


def _shown(value: object) -> str:
    """What a tenant wrote, quoted for a finding (bounded, control characters escaped)."""
    text = repr(str(value))
    return text if len(text) <= 82 else f"{text[:80]}…'"


_POLICY_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def load_policy(policies_dir: Path, org: str, *, orgs: Iterable[str] = ()) -> tuple[Policy | None, list[ConfigError], list[Located]]:
    """Load `policies/<org>.yaml` (or default.yaml alone), following `extends`, then apply env overrides.
    Returns the policy, the errors, and the parsed files of the chain (the org's own first).

    `extends` names `default` or a shared policy of the operator's: a file in the policies folder that is no
    org's own policy (its name is not one of `orgs`, the org folders). Never another org's policy and never a
    path: either is an `unknown_policy` / `invalid_value` finding that quotes only what the file wrote, the same
    for a name that exists and one that does not, so a tenant learns nothing of other orgs or of the host.

    `AGENT_DEFAULT_PROVIDER` sets the provider of the default policy (an org that names its own keeps
    it); `AGENT_AUTO_EXECUTE_THRESHOLD` / `AGENT_REQUIRE_APPROVAL_THRESHOLD` override every threshold. Each is also
    read as `ASTRALIS_DEFAULT_PROVIDER`, `ASTRALIS_AUTO_EXECUTE_THRESHOLD`, `ASTRALIS_REQUIRE_APPROVAL_THRESHOLD`.
    """
    errors: list[ConfigError] = []
    chain: list[Located] = []
    owned = set(orgs)
    name: str | None = org if (policies_dir / f"{org}.yaml").exists() else DEFAULT_POLICY
    seen: set[str] = set()
    while name is not None:
        path = policies_dir / f"{name}.yaml"
        where = chain[-1] if chain else None
        if name in seen:
            assert where is not None
            errors.append(ConfigError(where.path, where.line(("extends",)), "extends_cycle",
                                      f"policy '{name}' extends itself through {sorted(seen)}"))
            return None, errors, chain
        seen.add(name)
        if where is not None and not _POLICY_NAME.fullmatch(name):
            errors.append(ConfigError(where.path, where.line(("extends",)), "invalid_value",
                                      f"extends: {_shown(name)} is not a policy name: give `default` or the name "
                                      "of a shared policy of the operator's, never a path"))
            return None, errors, chain
        if where is not None and ((name != DEFAULT_POLICY and name in owned) or not path.is_file()):
            # Another org's policy answers exactly as a missing one: nothing of it is read or revealed.
            errors.append(ConfigError(where.path, where.line(("extends",)), "unknown_policy",
                                      f"extends: there is no shared policy {_shown(name)}; a policy extends "
                                      "`default` or a shared policy of the operator's, never an org's own"))
            return None, errors, chain
        if not path.is_file():
            errors.append(ConfigError(str(path), 0, "missing_file",
                                      f"policy '{name}' not found: the policies folder has no {name}.yaml"))
            return None, errors, chain
        doc = read_yaml(path)
        if isinstance(doc, ConfigError):
            return None, [doc], chain
        schema_errors = check_schema(doc, Policy, partial=True)
        if schema_errors:
            return None, schema_errors, chain
        chain.append(doc)
        ext = doc.data.get("extends")
        name = str(ext) if ext else None

    merged: dict[str, Any] = {}
    overrides = _env_overrides()
    for doc in reversed(chain):
        data = dict(doc.data)
        data.pop("extends", None)
        if doc is chain[-1] and overrides.get("AGENT_DEFAULT_PROVIDER"):
            data = _deep_merge(data, {"llm": {"provider": overrides["AGENT_DEFAULT_PROVIDER"]}})
        merged = _deep_merge(merged, data)
    policy = build_model(chain[0], Policy, merged)
    if isinstance(policy, list):
        return None, policy, chain
    env = overrides
    if "AGENT_AUTO_EXECUTE_THRESHOLD" in env or "AGENT_REQUIRE_APPROVAL_THRESHOLD" in env:
        try:
            thresholds: dict[DecisionType | Literal["default"], Threshold] = {}
            for k, t in policy.thresholds.items():
                if k == DecisionType.ESCALATE:  # escalations always go to a person; never gate them
                    thresholds[k] = t
                    continue
                thresholds[k] = Threshold(
                    auto_execute=float(env.get("AGENT_AUTO_EXECUTE_THRESHOLD", t.auto_execute)),
                    require_approval=float(env.get("AGENT_REQUIRE_APPROVAL_THRESHOLD", t.require_approval)))
            policy = policy.model_copy(update={"thresholds": thresholds})
        except (ValueError, ValidationError) as exc:
            errors.append(ConfigError("environment", 0, "invalid_value", f"AGENT_*_THRESHOLD: {exc}"))
            return None, errors, chain
    return policy, errors, chain


# --------------------------------------------------------------------------- references

def _check_references(org: OrgConfig, org_doc: Located, policy: Policy, policy_path: str,
                      rules: list[RuleRef], docs: dict[str, Located]) -> list[ConfigError]:
    errors: list[ConfigError] = []
    p = org_doc.path

    def dupes(items: list[str], what: str, loc: str) -> None:
        seen: set[str] = set()
        for i, x in enumerate(items):
            if x in seen:
                errors.append(ConfigError(p, org_doc.line((loc, i, "id")), "duplicate_id", f"{what} id '{x}' is defined twice"))
            seen.add(x)

    dupes([pl.id for pl in org.pipelines], "pipeline", "pipelines")
    dupes([u.id for u in org.users], "user", "users")
    user_ids = {u.id for u in org.users}
    for i, pl in enumerate(org.pipelines):
        for j, member in enumerate(pl.team):
            if member not in user_ids:
                errors.append(ConfigError(p, org_doc.line(("pipelines", i, "team", j)), "unknown_user",
                                          f"pipeline '{pl.id}' lists team member '{member}', who is not among the org's users"))

    for i, pl in enumerate(org.pipelines):
        for j, stage in enumerate(pl.closed or []):
            if stage not in pl.stages:
                errors.append(ConfigError(p, org_doc.line(("pipelines", i, "closed", j)), "unknown_stage",
                                          f"pipeline '{pl.id}' lists closed stage '{stage}', not one of its stages ({', '.join(pl.stages)})"))

    pdoc = docs.get(policy_path)

    def pline(*loc: str | int) -> int:
        return pdoc.line(loc) if pdoc else 0

    for intent, route in policy.routing.items():
        where = ("routing", str(intent))
        if route.pipeline is not None:
            found = org.pipeline(route.pipeline)
            if found is None:
                errors.append(ConfigError(policy_path, pline(*where, "pipeline"), "unknown_pipeline",
                                          f"routing for {intent} names pipeline '{route.pipeline}', which org '{org.org}' does not define"))
            elif route.stage is not None and route.stage not in found.stages:
                errors.append(ConfigError(policy_path, pline(*where, "stage"), "unknown_stage",
                                          f"routing for {intent} names stage '{route.stage}', not a stage of pipeline '{found.id}' ({', '.join(found.stages)})"))
        roles: list[tuple[str | None, tuple[str | int, ...]]] = [(route.assignee_role, ("assignee_role",))]
        roles += [(r, ("notify", "roles", k)) for k, r in enumerate(route.notify.roles)]
        for role, at in roles:
            if role is not None and role not in org.roles:
                errors.append(ConfigError(policy_path, pline(*where, *at), "unknown_role",
                                          f"routing for {intent} names role '{role}', which no user of org '{org.org}' holds ({', '.join(sorted(org.roles))})"))
        for k, name in enumerate(route.automations):
            if name not in policy.automations:
                known = ", ".join(sorted(policy.automations)) or "none are defined"
                errors.append(ConfigError(policy_path, pline(*where, "automations", k), "unknown_automation",
                                          f"routing for {intent} triggers automation '{name}', which the policy's automations do not define ({known})"))
        users: list[tuple[str | None, tuple[str | int, ...]]] = [(route.assignee, ("assignee",))]
        users += [(u, ("notify", "users", k)) for k, u in enumerate(route.notify.users)]
        for uid, at in users:
            if uid is not None and uid not in user_ids:
                errors.append(ConfigError(policy_path, pline(*where, *at), "unknown_user",
                                          f"routing for {intent} names user '{uid}', who is not among org '{org.org}''s users"))
    if policy.escalation:
        for role in policy.escalation.roles:
            if role not in org.roles:
                errors.append(ConfigError(policy_path, pline("escalation", "roles"), "unknown_role",
                                          f"escalation names role '{role}', which no user of org '{org.org}' holds"))

    errors.extend(template_errors(policy.notifications.templates, docs, policy_path))

    seen_rules: dict[str, RuleRef] = {}
    for ref in rules:
        doc = docs[ref.path]
        if ref.key in seen_rules:
            first = seen_rules[ref.key]
            errors.append(ConfigError(ref.path, ref.line, "duplicate_rule_id",
                                      f"rule id '{ref.key}' is already defined at {first.path}:{first.line}"))
        seen_rules[ref.key] = ref
        target = ref.rule.then.pipeline
        if target is not None and org.pipeline(target) is None:
            errors.append(ConfigError(ref.path, docs[ref.path].line(("rules", _rule_index(docs[ref.path], ref), "then", "pipeline")),
                                      "unknown_pipeline",
                                      f"rule '{ref.rule.id}' routes to '{target}', which org '{org.org}' does not define"))
        errors.extend(_regex_errors(ref, doc))
    return errors


def _regex_errors(ref: RuleRef, doc: Located) -> list[ConfigError]:
    """Every regex of a rule (`text.regex`, `fields[].matches`) compiled as the matcher compiles it (RE2):
    one `invalid_regex` at the pattern's line for each that RE2 refuses or that is over a size limit."""
    when = ref.rule.when
    found: list[tuple[str, tuple[str | int, ...], str]] = []
    if when.text:
        found += [(p, ("text", "regex", k), "regex") for k, p in enumerate(when.text.regex)]
    found += [(fc.matches, ("fields", k, "matches"), f"fields[{k}].matches")
              for k, fc in enumerate(when.fields) if fc.matches is not None]
    errors = []
    for pattern, loc, what in found:
        try:
            compile_user_regex(pattern)
        except RegexError as exc:
            line = doc.line(("rules", _rule_index(doc, ref), "when", *loc))
            shown = pattern if len(pattern) <= 120 else pattern[:117] + "..."
            errors.append(ConfigError(ref.path, line, "invalid_regex",
                                      f"rule '{ref.rule.id}': {what} {shown!r} does not compile: {exc}"))
    return errors


def _rule_index(doc: Located, ref: RuleRef) -> int:
    for i, r in enumerate(doc.data.get("rules", [])):
        if isinstance(r, dict) and r.get("id") == ref.rule.id:
            return i
    return 0


# --------------------------------------------------------------------------- the whole org

def _revision(paths: list[Path], docs: dict[str, Located], policy: Policy, model: OrgModel | None = None) -> str:
    # The files as they were parsed (a file rewritten since is not what was validated), plus the effective
    # policy: an environment override that changes the policy changes the revision; one that changes
    # nothing (an org naming its own provider) does not.
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(path.name.encode())
        h.update(b"\0")
        h.update(docs[str(path)].text.encode("utf-8"))
        h.update(b"\0")
    h.update(policy.model_dump_json().encode())
    if model is not None:  # a retrained model is a new revision; an org without one keeps its old hashes
        h.update(b"\0model\0" + model.manifest["sha256"].encode())
    return h.hexdigest()[:12]


def validate_org(org_dir: Path, policies_dir: Path, *,
                 orgs: Iterable[str] | None = None) -> tuple[OrgBundle | None, list[ConfigError]]:
    """Validate one org folder and its policy; return the bundle (None if any error) and all findings.
    `orgs`: every org whose policy is its own, never to be extended (default: the org folders beside `org_dir`;
    give it when `org_dir` is a staged copy away from its siblings)."""
    errors: list[ConfigError] = []
    docs: dict[str, Located] = {}
    org_path = org_dir / ORG_FILE
    if not org_path.exists():
        return None, [ConfigError(str(org_path), 0, "missing_file", f"every org folder needs {ORG_FILE}")]

    def load_doc(path: Path, model: type[BaseModel]) -> Any:
        doc = read_yaml(path)
        if isinstance(doc, ConfigError):
            errors.append(doc)
            return None
        docs[str(path)] = doc
        found = check_schema(doc, model)
        obj = build_model(doc, model)
        if found:
            # The model stage still runs so that a second, independent mistake (a value out of range elsewhere in
            # the file) is reported in the same run; a line the schema stage already reported is not said twice.
            errors.extend(found)
            seen = {e.line for e in found}
            errors.extend(e for e in obj if e.line not in seen) if isinstance(obj, list) else None
            return None
        if isinstance(obj, list):
            errors.extend(obj)
            return None
        return obj

    org = load_doc(org_path, OrgConfig)
    if org is not None and org.org != org_dir.name:
        errors.append(ConfigError(str(org_path), docs[str(org_path)].line(("org",)), "org_mismatch",
                                  f"org id '{org.org}' differs from its folder name '{org_dir.name}'"))

    rules: list[RuleRef] = []
    ruleset_names: dict[str, str] = {}
    rule_files = sorted(p for p in org_dir.glob("*.y*ml") if p.name != ORG_FILE)
    for path in rule_files:
        rs = load_doc(path, Ruleset)
        if rs is None:
            continue
        doc = docs[str(path)]
        if rs.ruleset in ruleset_names:
            errors.append(ConfigError(str(path), doc.line(("ruleset",)), "duplicate_id",
                                      f"ruleset '{rs.ruleset}' is also defined in {ruleset_names[rs.ruleset]}"))
        ruleset_names[rs.ruleset] = str(path)
        for i, rule in enumerate(rs.rules):
            rules.append(RuleRef(rs.ruleset, rule, str(path), doc.line(("rules", i, "id")),
                                 shown=f"rulesets/{org_dir.name}/{path.name}"))

    owners = {d.name for d in org_dirs(org_dir.parent)} if orgs is None else set(orgs)
    policy, policy_errors, policy_docs = load_policy(policies_dir, org_dir.name, orgs=owners | {org_dir.name})
    errors.extend(policy_errors)
    docs.update((d.path, d) for d in policy_docs)
    policy_paths = [Path(d.path) for d in policy_docs]

    if org is None or policy is None:
        return None, errors
    # References are checked even when another file failed: every independent finding in one run (the rules of
    # a file that did not load are simply not among those checked).
    org_policy_path = str(policy_paths[0]) if policy_paths else str(policies_dir / f"{org_dir.name}.yaml")
    errors.extend(_check_references(org, docs[str(org_path)], policy, org_policy_path, rules, docs))
    # Secret names are tenant input: checked against the org's prefix and the other orgs here (the prefix comes
    # from the org id: with a mismatched id its findings would only repeat that one mistake).
    if not any(e.code == "org_mismatch" for e in errors):
        errors.extend(boundary_errors(org, docs[str(org_path)], policy, policy_docs, owners))
    if any(e.severity == "error" for e in errors):
        return None, errors
    enabled = [r for r in rules if r.rule.enabled]
    if not enabled:
        errors.append(ConfigError(str(org_dir), 0, "no_rules", f"org '{org.org}' has no enabled rules"))
    if any(e.severity == "error" for e in errors):
        return None, errors
    for r in rules:
        if not r.rule.enabled:
            errors.append(ConfigError(r.path, r.line, "unreachable_rule", f"rule '{r.key}' is disabled", "warning"))
    try:
        model = load_model(org_dir)
    except ModelError as exc:
        return None, [*errors, ConfigError(exc.path, 0, exc.code, exc.message)]
    if model is None and policy.learning.enabled:
        errors.append(ConfigError(org_policy_path, 0, "model_missing", f"learning is enabled for org '{org.org}' "
                                  f"but {org_dir / 'model'} holds no model: run `astralis train --org {org.org}`",
                                  "warning"))
    bundle = OrgBundle(org=org, policy=policy, rules=tuple(enabled), model=model,
                       revision=_revision([org_path, *rule_files, *policy_paths], docs, policy, model),
                       files=tuple(str(p) for p in [org_path, *rule_files, *policy_paths]),
                       warnings=tuple(e for e in errors if e.severity == "warning"))
    return bundle, errors


def load_org(org_dir: Path, policies_dir: Path) -> OrgBundle:
    """Validate and return an org's bundle, or raise `ConfigInvalid` with every error."""
    bundle, errors = validate_org(org_dir, policies_dir)
    if bundle is None:
        raise ConfigInvalid(errors)
    return bundle


def org_dirs(rulesets_dir: Path) -> list[Path]:
    """Every org folder (a folder holding org.yaml) under a rulesets directory."""
    return sorted(p.parent for p in rulesets_dir.glob(f"*/{ORG_FILE}"))


__all__ = ["MAX_YAML_BYTES", "MAX_YAML_DEPTH", "DecisionType", "Located", "OrgBundle", "RuleRef", "load_org",
           "load_policy", "org_dirs", "parse_yaml", "validate_org", "yaml_limits"]

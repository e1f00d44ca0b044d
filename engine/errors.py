"""Configuration errors, printed as `path:line: code: message`, and the catalogue of their codes.

Codes are stable: scripts and editors may rely on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CODES: dict[str, str] = {
    "yaml_syntax": "the file is not valid YAML",
    "yaml_too_large": "the file is larger than the loader accepts (engine.loader.MAX_YAML_BYTES)",
    "yaml_too_deep": "the document nests deeper than the loader accepts (engine.loader.MAX_YAML_DEPTH)",
    "yaml_alias": "the document uses a YAML alias (*name); aliases are refused (their expansion is unbounded)",
    "yaml_too_many_nodes": "the document has more values than the loader accepts (engine.loader.MAX_YAML_NODES)",
    "yaml_number": "a number is longer than the loader accepts (engine.loader.MAX_YAML_NUMBER_CHARS)",
    "yaml_value": "a scalar cannot be read as its YAML type (a timestamp with a bad offset, a number out of range)",
    "not_a_mapping": "the document must be a mapping (key: value)",
    "missing_file": "a required file is missing",
    "schema": "the document does not match the JSON Schema",
    "invalid_value": "a value is rejected by the model's own checks",
    "org_mismatch": "org.yaml's org id differs from its folder name",
    "duplicate_id": "two pipelines, users or rulesets share an id",
    "duplicate_rule_id": "two rules share an id within a ruleset",
    "unknown_pipeline": "a reference names a pipeline the org does not define",
    "unknown_stage": "a reference names a stage the pipeline does not have",
    "unknown_user": "a reference names a user the org does not define",
    "unknown_role": "a reference names a role no user of the org holds",
    "unknown_automation": "a route triggers an automation the policy does not define",
    "invalid_template": "a notification template does not compile",
    "invalid_regex": "a regular expression does not compile",
    "forbidden_secret": "a secret name is outside the org's own prefix (<ORG>_...) or is one of the server's variables",
    "unknown_policy": "`extends` names a policy that does not exist",
    "extends_cycle": "policies extend each other in a cycle",
    "engine_limit": "the compiled rules exceed a hard limit of the rules engine",
    "compile_failed": "the rules engine refused or timed out on the compiled rules",
    "load_failed": "loading the org raised an unexpected error (the org is not served from that revision)",
    "no_rules": "the org has no enabled rules",
    "may_exceed_engine_limit": "warning: some events may satisfy more conditions than the engine takes at once",
    "unreachable_rule": "warning: a rule is disabled or can never match",
    "model_invalid": "the org model's files are missing a part or do not fit together",
    "model_tampered": "the org model's arrays do not hash to the value in its manifest",
    "model_missing": "warning: the policy enables learning but the org has no trained model",
}


@dataclass(frozen=True)
class ConfigError:
    """One problem found in a configuration file, located by path and line (1-based; 0 = whole file)."""

    path: str
    line: int
    code: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"error code '{self.code}' is not in engine.errors.CODES")

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.code}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        """The error as JSON-ready data (for the API and `validate --format json`)."""
        return {"path": self.path, "line": self.line, "code": self.code, "message": self.message,
                "severity": self.severity}


class ConfigInvalid(Exception):
    """Raised when a configuration cannot be loaded; carries every error found."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = [e for e in errors if e.severity == "error"]
        self.warnings = [e for e in errors if e.severity == "warning"]
        super().__init__("\n".join(str(e) for e in self.errors) or "invalid configuration")

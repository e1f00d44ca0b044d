"""The JSON Schemas of the config files (org, ruleset, policy): what `astralis schema` writes to schemas/, what the
dashboard's editor reads for completion and hover, and what editors reach through the files' `$schema` lines."""

from __future__ import annotations

import functools
import json

from pydantic import BaseModel

from engine.config import OrgConfig, Policy, Ruleset

SCHEMAS: dict[str, type[BaseModel]] = {"org.schema.json": OrgConfig, "ruleset.schema.json": Ruleset,
                                       "policy.schema.json": Policy}
"""File name → the model it describes."""


@functools.cache
def schema_texts() -> dict[str, str]:
    """The JSON Schemas of the config files, as written to schemas/ (file name → JSON text)."""
    out = {}
    for name, model in SCHEMAS.items():
        schema = model.model_json_schema(by_alias=True)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://astralis.example/schemas/{name}"
        out[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out

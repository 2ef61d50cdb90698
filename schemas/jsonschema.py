"""JSON Schema export for integrators: one file per event type, versioned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .events import INBOUND_MODELS, SCHEMA_VERSION, Alert, DeadLetter, RiskScore

OUTBOUND_MODELS: dict[str, type[BaseModel]] = {"risk_score": RiskScore, "alert": Alert, "dead_letter": DeadLetter}

_COMMON_RULES = (
    "event_time (and an ENS's eta) must be between 2000-01-01 and 2099-12-31 UTC",
    "JSON types are strict: no numbers or booleans in strings, no 1/0 for booleans, no 2.0 for integers",
    "unknown fields are rejected in schema_version 1.0 and ignored in a later 1.x",
)
UNEXPRESSED_RULES: dict[str, tuple[str, ...]] = {
    "ens": _COMMON_RULES,
    "declaration": (
        *_COMMON_RULES,
        "a goods item's taric_code starts with its cn_code",
        "item_number values are unique within a declaration",
    ),
    "excise": (*_COMMON_RULES, "arc is required when record_type is e_ad or report_of_receipt"),
    "outcome": (*_COMMON_RULES, "positive implies controlled", "infringement_type is required when positive"),
}
"""Rules the engine enforces that JSON Schema cannot say (cross-field checks, ranges of times):
written into each inbound schema's description, so a schema-valid event may still be rejected."""


def json_schema(model: type[BaseModel], event_type: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``model``, with a stable ``$id``."""
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"urn:vigie:schema:{event_type}:{SCHEMA_VERSION}"
    schema["x-vigie-schema-version"] = SCHEMA_VERSION
    if event_type in INBOUND_MODELS:
        # The models default event_type (Python code need not repeat it) but the decoder needs the
        # tag to pick a model: on the wire it is required, and a default would mislead.
        schema["required"] = ["event_type", *[name for name in schema.get("required", []) if name != "event_type"]]
        schema["properties"]["event_type"].pop("default", None)
        rules = "; ".join(UNEXPRESSED_RULES[event_type])
        schema["description"] = f"{schema.get('description', '')} Also enforced, beyond this schema: {rules}."
        schema["x-vigie-rules"] = list(UNEXPRESSED_RULES[event_type])
    return schema


def export_json_schemas(directory: Path) -> list[Path]:
    """Write ``<event_type>.schema.json`` for every inbound and outbound model; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for event_type, model in {**INBOUND_MODELS, **OUTBOUND_MODELS}.items():
        path = directory / f"{event_type}.schema.json"
        path.write_text(json.dumps(json_schema(model, event_type), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written

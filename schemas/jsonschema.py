"""JSON Schema export for integrators: one file per event type, versioned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .events import INBOUND_MODELS, SCHEMA_VERSION, Alert, DeadLetter, RiskScore

OUTBOUND_MODELS: dict[str, type[BaseModel]] = {"risk_score": RiskScore, "alert": Alert, "dead_letter": DeadLetter}


def json_schema(model: type[BaseModel], event_type: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``model``, with a stable ``$id``."""
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"urn:vigie:schema:{event_type}:{SCHEMA_VERSION}"
    schema["x-vigie-schema-version"] = SCHEMA_VERSION
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

"""Checkpoints: everything the engine learned, plus where in its input it stopped.

A checkpoint is written only after the sink has flushed every result up to that input
position, and atomically (write then rename). Restarting from it re-processes at most the
events after the position; since scoring is deterministic and sinks are idempotent on
event ids, nothing is lost and nothing is counted twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from vigie import __version__

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """A saved engine state and the input position it corresponds to."""

    state: dict[str, Any]
    position: dict[str, Any]
    """Runtime-specific: ``{"source": path, "lines": n}`` for a file."""


def save_checkpoint(path: Path, state: dict[str, Any], position: dict[str, Any]) -> None:
    """Atomically write a checkpoint to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT_VERSION, "engine": __version__, "position": position, "state": state}
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``, or ``None`` if there is none."""
    if not path.exists():
        return None
    payload = orjson.loads(path.read_bytes())
    if payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {payload.get('format')} is not {FORMAT_VERSION}")
    return Checkpoint(state=payload["state"], position=payload["position"])

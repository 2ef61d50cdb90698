"""Records benchmark figures in bench/RESULTS.md, one section per benchmark, replaced on re-run."""

from __future__ import annotations

import os
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nEach section is rewritten by the command it names. Machine: {cpus} cores.\n"


def record(name: str, command: str, table: list[tuple[str, ...]], notes: list[str]) -> None:
    """Replace (or add) the section ``## name`` of RESULTS.md."""
    header, *body = table
    lines = [f"## {name}", "", f"Command: `{command}`", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(row) + " |" for row in body]
    lines += [""] + [f"- {note}" for note in notes] + [""]
    section = "\n".join(lines)
    text = RESULTS.read_text() if RESULTS.exists() else HEADER.format(cpus=os.cpu_count())
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)

"""Puts a benchmark's latest table into README.md between its markers."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def update_readme(name: str, table: str) -> None:
    """Replace the text between ``<!-- bench:NAME:begin/end -->`` in README.md."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    text = README.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"README.md has no {begin} ... {end} block")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{begin}\n{table}{end}{tail}")

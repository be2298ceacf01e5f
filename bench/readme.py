"""One rendering of the benchmark results for README.md and bench/results/*.md.

``bench/results/NAME.json`` is the only source: ``render(NAME)`` turns it into
markdown (``tables.py``, ``tables_peers.py``), ``save`` writes a run's JSON and
then its ``.md`` rendered back from that file, and ``update_readme`` puts the
same rendering between README.md's ``<!-- bench:NAME:begin/end -->`` markers.
tests/test_readme_tables.py renders every block from the committed results
and fails if README.md or a ``.md`` file says anything else.

``python bench/readme.py [--results DIR]`` re-renders every ``.md`` file and
README block from the JSON files, without measuring anything.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import tables
import tables_embedding
import tables_peers
import tables_rescale

README = Path(__file__).resolve().parents[1] / "README.md"
RESULTS = Path(__file__).resolve().parent / "results"
RENDERERS = {
    "kernels": tables.kernels,
    "transport": tables.transport,
    "service": tables.service,
    "durability": tables.durability,
    "peers": tables_peers.peers,
    "training": tables_peers.training,
    "training_fit": tables_peers.training_fit,
    "scaling": tables.scaling,
    "embedding_tables": tables_embedding.embedding_tables,
    "rescale": tables_rescale.rescale,
}
BLOCK = re.compile(r"<!-- bench:(\w+):begin -->\n(.*?)<!-- bench:\1:end -->", re.S)


def load(name: str, folder: Path = RESULTS) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def render(name: str, folder: Path = RESULTS) -> str:
    """The markdown of ``name`` from ``folder``'s JSON results; ``latest`` is
    the summary of the peer benchmarks present (peers, training, scaling)."""
    if name == "latest":
        parts = {
            part: load(part, folder)
            for part in tables_peers.PARTS
            if (folder / f"{part}.json").is_file()
        }
        return tables_peers.latest(parts)
    return RENDERERS[name](load(name, folder))


def save(name: str, document: dict, folder: Path) -> str:
    """Write ``NAME.json``, then ``NAME.md`` rendered from the file just
    written (so the markdown never sees anything the JSON does not hold)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=1, default=str) + "\n"
    (folder / f"{name}.json").write_text(text)
    markdown = render(name, folder)
    (folder / f"{name}.md").write_text(markdown)
    return markdown


def blocks(text: str) -> dict[str, str]:
    """README.md's benchmark blocks: name -> the text between the markers."""
    return {m.group(1): m.group(2) for m in BLOCK.finditer(text)}


def update_readme(name: str, folder: Path = RESULTS) -> None:
    """Replace the text between ``<!-- bench:NAME:begin/end -->`` in README.md
    with ``render(name, folder)``."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    text = README.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"README.md has no {begin} ... {end} block")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{begin}\n{render(name, folder)}{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON folder")
    args = parser.parse_args()
    for name in [*RENDERERS, "latest"]:
        if name == "latest" or (args.results / f"{name}.json").is_file():
            (args.results / f"{name}.md").write_text(render(name, args.results))
    for name in blocks(README.read_text()):
        update_readme(name, args.results)


if __name__ == "__main__":
    main()

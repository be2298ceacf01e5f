"""README.md's benchmark tables are a rendering of the committed results.

bench/results/NAME.json is the one source: README.md's
``<!-- bench:NAME:begin/end -->`` blocks and bench/results/NAME.md must equal
``bench/readme.py``'s rendering of it, and every headline sentence must state
the spread of the run it quotes. ``python bench/readme.py`` re-renders them.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))

import readme  # noqa: E402
import tables  # noqa: E402
import tables_peers  # noqa: E402

BLOCKS = readme.blocks((ROOT / "README.md").read_text())
RENDERED = [*readme.RENDERERS, "latest"]
# Sentences that quote figures: each must carry its rounds' spread, or say
# that the run it renders did not record one.
HEADLINES = re.compile(
    r"^(Headline|Disk floor|Training steps/s)|Sparse push:|Checkpoint of", re.M
)
RANGE = re.compile(r"\[[0-9.,%]+-[0-9.,%]+\]")


def test_readme_has_the_benchmark_blocks():
    assert set(BLOCKS) == {
        "kernels",
        "transport",
        "service",
        "durability",
        "latest",
        "training_fit",
        "embedding_tables",
        "rescale",
    }


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_readme_block_is_the_rendering_of_the_committed_results(name):
    assert BLOCKS[name] == readme.render(name), (
        f"README.md's bench:{name} block differs from bench/results; "
        "run `python bench/readme.py`"
    )


@pytest.mark.parametrize("name", RENDERED)
def test_results_markdown_is_the_rendering_of_its_json(name):
    assert (RESULTS / f"{name}.md").read_text() == readme.render(name), (
        f"bench/results/{name}.md differs from its JSON; run `python bench/readme.py`"
    )


@pytest.mark.parametrize("name", RENDERED)
def test_every_headline_states_its_spread(name):
    text = readme.render(name)
    for sentence in re.split(r"(?<=\.) (?=[A-Z])|\n", text):
        if HEADLINES.search(sentence):
            assert RANGE.search(sentence) or tables.NOT_RECORDED in sentence, sentence


def test_the_latest_summary_links_the_plots_of_its_parts():
    summary = readme.render("latest")
    for part in tables_peers.PARTS:
        for plot in tables_peers.PLOTS[part]:
            assert f"(bench/results/{plot})" in summary
            assert (RESULTS / plot).is_file()


# The renderers on documents of the reworked benchmarks (per-round samples,
# compile times, failed peers), built from the committed ones. ---------------


def _peers_with_new_rows() -> dict:
    doc = copy.deepcopy(json.loads((RESULTS / "peers.json").read_text()))
    names = tables_peers.peer_names(doc["threads"])
    for rows in doc["dense"].values():
        rows[names["torch_compile"]] = {"error": "BackendCompilerFailed: no cc"}
        rows[names["keras3_xla"]] = copy.deepcopy(rows[names["keras3"]])
        rows[names["keras3_xla"]]["first_call_seconds"] = 1.5
    cases = doc["sparse"]["cases"]
    cases[tables_peers.SPARSE["tf_keras_no_reads"]] = copy.deepcopy(
        cases[tables_peers.SPARSE["ours"]]
    )
    cases[tables_peers.SPARSE["tf_keras"]]["retraces"] = 0
    return doc


def test_a_failed_peer_keeps_its_row_with_the_error():
    text = tables_peers.peers(_peers_with_new_rows())
    assert "| torch.optim.Adamax, torch.compile(step) | 1e+05 | failed: Backend" in (
        text
    )
    assert "Keras 3 with XLA" in text
    assert "without its three whole-table reads" in text
    summary = tables_peers.latest({"peers": _peers_with_new_rows()})
    assert "| torch.optim.Adamax, torch.compile(step) | failed: " in summary
    assert "| 1.50 |" in summary  # the first call, apart from the warm steps


def test_kernel_ratios_are_taken_round_by_round_when_samples_are_kept():
    doc = json.loads((RESULTS / "kernels.json").read_text())
    for rows in [*doc["dense"].values(), doc["sparse"]]:
        for row in rows.values():
            row["samples_ms"] = [row["min_ms"], row["median_ms"], row["max_ms"]]
    text = tables.kernels(doc)
    assert "per-round ratios" in text
    assert tables.NOT_RECORDED not in text
    headline = text.splitlines()[-1]
    assert len(RANGE.findall(headline)) == 4, headline

"""The dashboard at ``/`` in a real browser: Debian's chromium, driven by
Playwright, against a real server process trained by the real client.

Needs the ``chromium`` binary (``.ci/system-deps`` installs it as root). Without
it the tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request

import numpy as np
import pytest
from helpers import skips
from helpers.servers import start_cluster
from playwright.sync_api import expect, sync_playwright

from adamax_ps.client import Adamax, IndexedSlices, connect

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
CHARTS = [
    "chart-iterations",
    "chart-push-rate",
    "chart-w",
    "chart-m",
    "chart-v",
    "chart-update",
]
F32 = np.float32
TIMES = " \N{MULTIPLICATION SIGN} "  # between the sizes of a shape
MISSING = "\N{EN DASH}"  # a value the page has not got


def chromium() -> str:
    skips.require("chromium")  # Debian's; not Playwright's download
    return shutil.which("chromium")


def rest(server, path: str):
    with urllib.request.urlopen(server.http_address + path, timeout=10) as answer:
        return json.load(answer)


class Training:
    """A worker pushing sparse and dense gradients to one server."""

    def __init__(self, server) -> None:
        self.server = server
        self.cluster = connect(server.grpc_address)
        self.rng = np.random.default_rng(7)
        self.emb = self.cluster.variable(
            "emb", shape=(500, 8), initializer="glorot_uniform"
        )
        self.dense = self.cluster.variable("dense", shape=(32,), initializer="ones")
        # Never gets a gradient: no slots, nothing to rank.
        self.cluster.variable("frozen", shape=(4, 4), initializer="ones")
        self.opt = Adamax(learning_rate=0.01, cluster=self.cluster)

    def push(self, steps: int) -> None:
        for _ in range(steps):
            rows = self.rng.integers(0, 500, 16)
            sparse = IndexedSlices(self.rng.normal(size=(16, 8)).astype(F32), rows)
            dense = self.rng.normal(size=(32,)).astype(F32)
            self.opt.apply_gradients([(sparse, self.emb), (dense, self.dense)])

    def iterations(self) -> int:
        (optimizer,) = rest(self.server, "/api/v1/optimizers")
        return optimizer["iterations"]


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(browser, tmp_path_factory):
    # Frequent history samples so the charts fill within a test's time.
    (started,) = start_cluster(
        1, tmp_path_factory.mktemp("dashboard"), "--history-interval", "0.2"
    )
    yield started
    started.kill()


@pytest.fixture(scope="module")
def training(server):
    worker = Training(server)
    worker.push(5)
    yield worker
    worker.cluster.close()


@pytest.fixture
def dashboard(browser, server, training):
    """The page, opened fresh, and the errors it reports (console and thrown)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else 0,
    )
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.http_address + "/")
    expect(page.locator("#status")).to_have_text("live")
    yield page, errors
    page.close()


def test_page_loads_without_errors_and_draws_charts(dashboard):
    page, errors = dashboard
    expect(page).to_have_title("adamax-ps")
    expect(page.locator("#server-index")).to_have_text("0 of 1")
    expect(page.locator("#shards")).to_have_text("2")
    expect(page.locator("#checkpoint-age")).to_have_text("none yet")
    # A line needs two samples.
    page.wait_for_function(
        "document.getElementById('chart-iterations').dataset.points >= 2"
    )
    for chart in CHARTS:
        canvas = page.locator(f"#{chart} canvas")
        expect(canvas).to_have_count(1)
        box = canvas.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 50, chart
    # The iterations line is drawn: pixels of its colour (#2563eb) on the canvas.
    drawn = page.evaluate(
        """() => {
            const canvas = document.querySelector('#chart-iterations canvas');
            const {data} = canvas.getContext('2d')
                .getImageData(0, 0, canvas.width, canvas.height);
            let n = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (Math.abs(data[i] - 37) < 30 && Math.abs(data[i + 1] - 99) < 30
                    && Math.abs(data[i + 2] - 235) < 30 && data[i + 3] > 100) n++;
            }
            return n;
        }"""
    )
    assert drawn > 50
    assert errors == []


def test_displayed_iterations_follow_pushes(dashboard, training):
    page, errors = dashboard
    cell = page.locator('#optimizers tr[data-name="Adamax"] td.iterations')
    before = training.iterations()
    expect(cell).to_have_text(f"{before:,}")
    training.push(3)
    after = training.iterations()
    assert after == before + 3
    expect(cell).to_have_text(f"{after:,}")
    # The chart follows too (its last sample reaches the new count).
    page.wait_for_function(
        """(n) => document.querySelector('#chart-iterations')
            .parentElement.querySelector('.latest').textContent === n""",
        arg=f"{after:,}",
    )
    assert errors == []


def test_variable_table_matches_the_rest_api(dashboard, server):
    page, errors = dashboard
    expected = rest(server, "/api/v1/variables?stats=true")
    rows = page.locator("#variables tbody tr")
    expect(rows).to_have_count(len(expected))
    shown = rows.evaluate_all(
        """rows => rows.map(r => Object.fromEntries(
            [...r.cells].map(c => [c.className.split(' ')[0], c.textContent])
            .concat([['key', r.dataset.name]])))"""
    )
    assert [r["key"] for r in shown] == [v["name"] for v in expected]
    for row, variable in zip(shown, expected, strict=True):
        stats = variable["stats"]
        assert row["name"] == variable["name"]
        assert row["shape"] == TIMES.join(str(n) for n in variable["shape"])
        assert row["dtype"] == variable["dtype"]
        for column, key in [
            ("norm-w", "w"),
            ("norm-m", "Adamax/m"),
            ("norm-v", "Adamax/v"),
        ]:
            if key not in stats:
                assert row[column] == MISSING, (variable["name"], column)
                continue
            assert float(row[column]) == pytest.approx(
                stats[key]["l2_norm"], rel=1e-3, abs=1e-12
            ), (variable["name"], column)
        assert row["nonzero-w"] == f"{stats['w']['nonzero_rows']:,}"
    assert errors == []


def test_choosing_a_variable_shows_its_top_rows(dashboard, server):
    page, errors = dashboard
    top = page.locator("#top-rows")

    def shown_rows() -> list[int]:
        return [
            int(r)
            for r in top.locator("tr").evaluate_all(
                "rows => rows.map(r => r.dataset.row)"
            )
        ]

    def expected_rows(name: str, by: str) -> list[int]:
        query = urllib.parse.urlencode({"optimizer": "Adamax", "k": 10, "by": by})
        answer = rest(server, f"/api/v1/variables/{name}/top?{query}")
        return [r["row"] for r in answer["rows"]]

    # The largest trained variable is chosen first.
    expect(page.locator("#chosen-name")).to_have_text("emb")
    expect(top).to_have_attribute("data-variable", "emb")
    expect(top.locator("tr")).to_have_count(10)
    assert shown_rows() == expected_rows("emb", "update")

    page.locator('#variables tbody tr[data-name="dense"]').click()
    expect(page.locator("#chosen-name")).to_have_text("dense")
    expect(page.locator('#variables tr[data-name="dense"]')).to_have_class("chosen")
    expect(top).to_have_attribute("data-variable", "dense")
    assert shown_rows() == expected_rows("dense", "update")

    page.select_option("#top-by", "m")
    expect(top).to_have_attribute("data-by", "m")
    assert shown_rows() == expected_rows("dense", "m")

    # Without slots there is nothing to rank: a message, and no failed request.
    page.locator('#variables tbody tr[data-name="frozen"]').click()
    expect(page.locator("#top-message")).to_contain_text(
        "Adamax has not updated frozen yet"
    )
    expect(top.locator("tr")).to_have_count(0)
    assert errors == []


@pytest.fixture(scope="module")
def table(training):
    """A hash-keyed table with rows, refused keys and evictions: ids 0-3 are
    pushed most, so they lead its top keys."""
    ids = training.cluster.embedding_table(
        "ids", 4, capacity=16, admission={"min_count": 2}, eviction={"policy": "lfu"}
    )
    rng = np.random.default_rng(3)
    for step in range(6):
        keys = np.concatenate([np.arange(4), rng.integers(4, 40, 12)])
        keys = np.concatenate([keys, keys[: step + 1]])  # repeats
        grads = rng.normal(size=(len(keys), 4)).astype(F32)
        training.opt.apply_gradients([(IndexedSlices(grads, keys), ids)])
    return ids


def test_tables_section_shows_counts_chart_and_top_keys(browser, server, table):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else 0,
    )
    page.goto(server.http_address + "/")
    (expected,) = rest(server, "/api/v1/tables")
    assert expected["evicted"] > 0 and expected["filtered"] > 0
    row = page.locator('#tables tbody tr[data-name="ids"]')
    expect(row).to_have_class("chosen")
    cells = {
        "size": f"{expected['size']:,}",
        "capacity": "16",
        "dim": "4",
        "dtype": "float32",
        "admitted": f"{expected['admitted']:,}",
        "evicted": f"{expected['evicted']:,}",
        "filtered": f"{expected['filtered']:,}",
    }
    for cell, text in cells.items():
        expect(row.locator(f"td.{cell}")).to_have_text(text)
    expect(row.locator("td.per-row")).not_to_have_text(MISSING)
    expect(page.locator("#tables .empty")).to_be_hidden()

    # The chart holds the sampled counts: its last sample is the table now.
    page.wait_for_function(
        """(size) => {
            const data = state.charts["chart-table"]?.plot.data;
            return data && data[0].length >= 2 && data[1].at(-1) === size;
        }""",
        arg=expected["size"],
    )
    box = page.locator("#chart-table canvas").bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 50
    series = page.evaluate(
        "() => state.charts['chart-table'].plot.series.slice(1).map(s => s.label)"
    )
    assert series == ["size", "admitted", "evicted", "filtered"]

    # Top keys: the most updated first, as the REST API ranks them.
    top = rest(server, "/api/v1/tables/ids?top_keys=10")["top_keys"]
    keys = page.locator("#top-keys-rows")
    expect(keys).to_have_attribute("data-table", "ids")
    expect(keys.locator("tr")).to_have_count(len(top))
    shown = keys.locator("tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.key, r.cells[1].textContent])"
    )
    assert shown == [[str(k["key"]), f"{k['updates']:,}"] for k in top]
    assert {int(k) for k, _ in shown[:4]} == {0, 1, 2, 3}
    assert errors == []
    page.close()

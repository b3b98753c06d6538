"""The gate's rule (Registry.admit) and CursorGate, on a crawler with the project's settings."""

from __future__ import annotations

from typing import Any

import pytest
from scrapy import Request, Spider
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.settings import Settings
from scrapy.spidermiddlewares.httperror import HttpError
from scrapy.utils.conf import build_component_list
from scrapy.utils.test import get_crawler

from civicband import jobs
from civicband import settings as project
from civicband.gate import CursorGate
from civicband.lifecycle import ENDED, VERIFYING, ActiveJob
from civicband.middlewares import RATE_LIMIT_WAITS
from civicband.registry import Registry
from civicband.spiders.civicband import CivicbandSpider

URL = "https://oakland.ca.civic.band/meetings/agendas.json?_sort=id&_size=1000&_nocount=1"
DROPPED = "civicband/requests/dropped"


def crawler_for(spidercls: Any = CivicbandSpider, **overrides: Any) -> Any:
    """A crawler with the project's settings: the Store (unopened) and the Source, and what the
    spider adds itself (the Registry, the gate, the pipeline)."""
    values = {name: getattr(project, name) for name in dir(project) if name.isupper()}
    values.update(
        {
            "EXTENSIONS": {"civicband.store.Store": 0, "civicband.source.Source": 1},
            "CIVICBAND_SERVICE_SECRET": "",
            **overrides,
        }
    )
    return get_crawler(spidercls, values)


@pytest.fixture
def crawler():
    return crawler_for()


@pytest.fixture
def registry(crawler) -> Registry:
    found = crawler.get_extension(Registry)
    assert found is not None
    return found


@pytest.fixture
def gate(crawler) -> CursorGate:
    return CursorGate.from_crawler(crawler)


def hold(
    registry: Registry,
    job_id: int = 7,
    *,
    token: int = 3,
    cursor: str | None = "00d5ee9e5f1a,00d5ee9e5f1a",
    mode: str = jobs.FULL,
) -> ActiveJob:
    lease = jobs.Lease(job_id, token, "oakland.ca", "agenda")
    claim = jobs.Claim(lease, mode, cursor, exhausted=False, pages_fetched=0, took_over=False)
    job = registry.add(claim, run_id=1, allow_shrink=False, repair=False)
    job.move(job.first_step())  # as the registry starts a job it claims
    return job


def page(job_id: int = 7, cursor: str | None = "00d5ee9e5f1a,00d5ee9e5f1a", **meta: Any) -> Request:
    return Request(URL, meta={"job_id": job_id, "cursor": cursor, "token": 3, **meta})


# ---- Registry.admit ------------------------------------------------------------------------------


def test_the_next_page_of_a_held_job_is_admitted_and_marked_in_flight(registry):
    job = hold(registry)
    assert not job.inflight
    assert registry.admit(page()) is None
    assert job.inflight


def test_the_first_page_of_a_pass_has_no_cursor(registry):
    job = hold(registry, cursor=None)
    assert registry.admit(page(cursor="x")) == "not its next page"
    assert registry.admit(page(cursor=None)) is None
    assert job.inflight


def test_a_job_not_held_here_is_refused(registry):
    hold(registry, 7)
    assert registry.admit(page(job_id=8)) == "not running here"
    assert registry.admit(Request(URL, meta={"cursor": None})) == "not running here"


def test_a_stopped_job_is_refused(registry):
    job = hold(registry)
    job.move(ENDED)
    assert registry.admit(page()) == "not running here"
    assert not job.inflight


def test_a_page_that_is_not_the_next_cursor_is_refused(registry):
    job = hold(registry, cursor="00d5ee9e5f1a,00d5ee9e5f1a")
    for stale in ("004351235980,004351235980", None, "00D5EE9E5F1A,00D5EE9E5F1A"):
        assert registry.admit(page(cursor=stale)) == "not its next page"
    assert not job.inflight


@pytest.mark.parametrize(
    ("mode", "state"),
    [(jobs.CATCHUP, None), (jobs.VERIFY, None), (jobs.FULL, VERIFYING)],
)
def test_a_job_that_is_not_paging_is_refused(registry, mode, state):
    job = hold(registry, mode=mode)
    if state is not None:
        assert job.move(state)
    assert registry.admit(page()) == "not paging"
    assert not job.inflight


def test_a_duplicate_while_one_is_in_flight_is_refused(registry):
    hold(registry)
    assert registry.admit(page()) is None
    assert registry.admit(page()) == "already being fetched"


@pytest.mark.parametrize(
    "meta", [{"retry_times": 1}, {"retry_times": 4}, {RATE_LIMIT_WAITS: 1}], ids=str
)
def test_a_retry_is_admitted_while_its_page_is_in_flight(registry, meta):
    job = hold(registry)
    assert registry.admit(page()) is None
    assert registry.admit(page(**meta)) is None
    assert job.inflight


def test_a_retry_of_another_page_is_still_refused(registry):
    hold(registry)
    assert registry.admit(page(cursor="old,old", retry_times=2)) == "not its next page"
    assert registry.admit(page(job_id=99, retry_times=2)) == "not running here"


def test_zero_retries_is_not_a_retry(registry):
    hold(registry)
    assert registry.admit(page()) is None
    assert registry.admit(page(retry_times=0, **{RATE_LIMIT_WAITS: 0})) == "already being fetched"


def test_a_restored_request_naming_an_old_token_gets_the_current_one(registry):
    hold(registry, token=12)
    restored = page(token=3)
    assert registry.admit(restored) is None
    assert restored.meta["token"] == 12


def test_a_refused_request_keeps_its_token(registry):
    hold(registry, token=12)
    refused = page(cursor="old,old", token=3)
    assert registry.admit(refused) == "not its next page"
    assert refused.meta["token"] == 3


def test_each_job_has_its_own_next_page(registry):
    one, two = hold(registry, 1, cursor="a,a"), hold(registry, 2, cursor="b,b")
    assert registry.admit(page(job_id=1, cursor="b,b")) == "not its next page"
    assert registry.admit(page(job_id=2, cursor="b,b")) is None
    assert (one.inflight, two.inflight) == (False, True)
    assert registry.admit(page(job_id=1, cursor="a,a")) is None


# ---- CursorGate ----------------------------------------------------------------------------------


def test_the_gate_drops_what_the_registry_refuses_and_counts_it(crawler, registry, gate):
    hold(registry)
    for refused in (page(job_id=99), page(cursor="old,old")):
        with pytest.raises(IgnoreRequest, match=r"^job \d+: not"):
            gate.process_request(refused)
    assert crawler.stats.get_value(DROPPED) == 2


def test_the_gate_passes_an_admitted_request_and_counts_nothing(crawler, registry, gate):
    job = hold(registry)
    assert gate.process_request(page()) is None
    assert job.inflight
    assert crawler.stats.get_value(DROPPED) is None
    with pytest.raises(IgnoreRequest, match="^job 7: already being fetched$"):
        gate.process_request(page())
    assert crawler.stats.get_value(DROPPED) == 1


def test_a_request_without_a_cursor_passes_the_gate(crawler, registry, gate):
    assert gate.process_request(Request(URL, meta={"job_id": 99})) is None
    assert gate.process_request(Request("https://civic.band/")) is None
    assert crawler.stats.get_value(DROPPED) is None


def test_the_gate_runs_before_the_retries_in_the_spiders_downloader_middlewares():
    """A request the gate drops must never wait out a backoff or a rate-limit pause first."""
    order = build_component_list(crawler_for().settings.getwithbase("DOWNLOADER_MIDDLEWARES"))
    assert order.index("civicband.gate.CursorGate") < order.index(
        "civicband.middlewares.retry.BackoffRetryMiddleware"
    )


def test_the_civicband_spider_adds_its_own_components_and_no_other_spider_gets_them():
    class Other(Spider):
        name = "other"

    ours, other = crawler_for().settings, crawler_for(Other).settings
    for name, component in (
        ("EXTENSIONS", "civicband.registry.Registry"),
        ("EXTENSIONS", "civicband.extensions.progress.Progress"),
        ("DOWNLOADER_MIDDLEWARES", "civicband.gate.CursorGate"),
        ("ITEM_PIPELINES", "civicband.pipelines.PostgresPipeline"),
    ):
        assert component in {_path(c) for c in ours.getdict(name)}, (name, component)
        assert component not in {_path(c) for c in other.getdict(name)}, (name, component)
    # The project's own components stay beside them.
    assert "civicband.store.Store" in {_path(c) for c in ours.getdict("EXTENSIONS")}


def _path(component: Any) -> str:
    return (
        component if isinstance(component, str) else f"{component.__module__}.{component.__name__}"
    )


def test_the_gate_needs_the_registry():
    class Other(Spider):
        name = "other"

    with pytest.raises(NotConfigured, match="needs civicband.registry.Registry"):
        CursorGate.from_crawler(crawler_for(Other))


def test_http_error_is_an_ignore_request():
    # So the spider's errback, which ignores IgnoreRequest (a dropped request), must check
    # HttpError first: an HTTP error answer is a failure, not a drop.
    assert issubclass(HttpError, IgnoreRequest)


def test_extensions_given_on_the_command_line_keep_the_spiders_own_components():
    # -s EXTENSIONS='{...}' outranks the spider's settings: its components are merged into it.
    values = {name: getattr(project, name) for name in dir(project) if name.isupper()}
    settings = Settings(values)
    mine = {"civicband.store.Store": 0, "civicband.source.Source": 1, "my.Extension": 900}
    settings.set("EXTENSIONS", mine, priority="cmdline")
    crawler = Crawler(CivicbandSpider, settings)
    crawler.settings.update(settings)  # what CrawlerProcess.crawl(crawler) does with its own
    extensions = {_path(c) for c in crawler.settings.getdict("EXTENSIONS")}
    assert {"my.Extension", "civicband.registry.Registry", "civicband.store.Store"} <= extensions

"""debounce_signals: an echo of the first SIGINT/SIGTERM is not Scrapy's second-signal kill."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from scrapy.crawler import AsyncCrawlerProcess, CrawlerProcess

from civicband.commands.crawl import SIGNAL_ECHO, debounce_signals

PAIRS = [
    ("_signal_shutdown", "_signal_kill"),
    ("_signal_shutdown_reactorless", "_signal_kill_reactorless"),
]
INT, TERM = signal.SIGINT, signal.SIGTERM


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeProcess:
    """Scrapy's handler names, recording what reached them."""

    def __init__(self, pairs: list[tuple[str, str]] = PAIRS) -> None:
        self.calls: list[tuple[str, int]] = []
        self.inside: list[tuple[str, int]] = []  # signals to land inside the shutdown handler
        for shutdown_name, kill_name in pairs:
            setattr(self, shutdown_name, self._recorder(shutdown_name, reenter=True))
            setattr(self, kill_name, self._recorder(kill_name, reenter=False))

    def _recorder(self, name: str, *, reenter: bool) -> Any:
        def handler(signum: int, frame: Any) -> None:
            self.calls.append((name, signum))
            while reenter and self.inside:
                # Python runs the handler installed at the time, itself, inside this call.
                handler_name, again = self.inside.pop(0)
                getattr(self, handler_name)(again, None)

        return handler


@pytest.fixture(params=PAIRS, ids=["reactor", "reactorless"])
def pair(request):
    return request.param


def test_the_same_signal_again_within_the_window_is_ignored(pair):
    shutdown, kill = pair
    process, clock = FakeProcess(), Clock()
    received = debounce_signals(process, window=1.0, clock=clock)
    getattr(process, shutdown)(INT, None)
    clock.now += 0.999
    getattr(process, kill)(INT, None)
    assert process.calls == [(shutdown, INT)]
    assert received == {INT: 1000.0}


def test_the_same_signal_after_the_window_kills(pair):
    shutdown, kill = pair
    process, clock = FakeProcess(), Clock()
    received = debounce_signals(process, window=1.0, clock=clock)
    getattr(process, shutdown)(TERM, None)
    clock.now += 0.5
    getattr(process, kill)(TERM, None)
    clock.now += 0.5  # exactly the window after the first
    getattr(process, kill)(TERM, None)
    assert process.calls == [(shutdown, TERM), (kill, TERM)]
    assert received == {TERM: 1000.0}


def test_a_different_signal_kills_at_once(pair):
    shutdown, kill = pair
    process, clock = FakeProcess(), Clock()
    received = debounce_signals(process, window=1.0, clock=clock)
    getattr(process, shutdown)(INT, None)
    getattr(process, kill)(TERM, None)
    assert process.calls == [(shutdown, INT), (kill, TERM)]
    assert received == {INT: 1000.0}


def test_a_signal_inside_the_shutdown_handler_is_a_second_signal_ignored_as_an_echo(pair):
    shutdown, kill = pair
    process, clock = FakeProcess(), Clock()
    received = debounce_signals(process, window=1.0, clock=clock)
    process.inside = [(shutdown, INT)]
    getattr(process, shutdown)(INT, None)
    assert process.calls == [(shutdown, INT)]  # Scrapy's shutdown ran once, nothing killed
    assert process.inside == []
    assert received == {INT: 1000.0}


def test_a_different_signal_inside_the_shutdown_handler_kills(pair):
    shutdown, kill = pair
    process, clock = FakeProcess(), Clock()
    received = debounce_signals(process, window=1.0, clock=clock)
    process.inside = [(shutdown, TERM)]
    getattr(process, shutdown)(INT, None)
    assert process.calls == [(shutdown, INT), (kill, TERM)]
    assert received == {INT: 1000.0}


def test_the_shutdown_handler_called_again_after_the_window_kills(pair):
    shutdown, kill = pair
    process, clock = FakeProcess(), Clock()
    debounce_signals(process, window=1.0, clock=clock)
    getattr(process, shutdown)(INT, None)
    clock.now += 5
    getattr(process, shutdown)(INT, None)  # Scrapy had not yet installed the kill handler
    assert process.calls == [(shutdown, INT), (kill, INT)]


def test_a_kill_before_any_shutdown_kills():
    process, clock = FakeProcess(), Clock()
    received = debounce_signals(process, window=1.0, clock=clock)
    process._signal_kill(INT, None)
    assert process.calls == [("_signal_kill", INT)]
    assert received == {}


def test_nothing_is_recorded_before_a_signal_and_the_window_defaults_to_signal_echo():
    process, clock = FakeProcess(), Clock()
    received = debounce_signals(process, clock=clock)
    assert received == {}
    process._signal_shutdown(INT, None)
    clock.now += SIGNAL_ECHO - 0.01
    process._signal_kill(INT, None)
    clock.now += 0.01
    process._signal_kill(INT, None)
    assert process.calls == [("_signal_shutdown", INT), ("_signal_kill", INT)]


def test_a_process_with_one_pair_only_gets_that_pair_wrapped():
    process = FakeProcess(PAIRS[1:])
    original = process._signal_kill_reactorless
    received = debounce_signals(process, window=1.0, clock=Clock())
    assert process._signal_kill_reactorless is not original
    assert not hasattr(process, "_signal_kill")
    process._signal_shutdown_reactorless(TERM, None)
    process._signal_kill_reactorless(TERM, None)
    assert process.calls == [("_signal_shutdown_reactorless", TERM)]
    assert received == {TERM: 1000.0}


def test_a_half_pair_is_left_alone():
    process = FakeProcess([])
    process._signal_shutdown = lambda signum, frame: process.calls.append(("s", signum))
    original = process._signal_shutdown
    assert debounce_signals(process, clock=Clock()) == {}
    assert process._signal_shutdown is original


@pytest.mark.parametrize("cls", [CrawlerProcess, AsyncCrawlerProcess])
def test_scrapy_still_names_its_handlers_as_debounce_expects(cls):
    assert any(
        callable(getattr(cls, shutdown, None)) and callable(getattr(cls, kill, None))
        for shutdown, kill in PAIRS
    )

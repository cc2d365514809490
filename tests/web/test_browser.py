"""The web page in a real browser: headless Chromium against a real stack.

A private redis-server, ``mtbbs-collector run`` ingesting the hosts' reports
and session events, and ``mtbbs-collector exporter`` serving the page; the
browser runs the page's script (``--virtual-time-budget`` lets its timers
and fetches run) and the test reads the DOM it leaves, which is what a
person sees. The screenshots of the docs are made here
(``MTBBS_WRITE_SCREENSHOTS=1`` writes them into docs/images). Skipped, with the
reason, where Chromium (the Debian package ``chromium``) is not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import redis

CHROMIUM = next((found for name in ("chromium", "chromium-browser", "google-chrome")
                 if (found := shutil.which(name))), None)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                       "(apt-get install chromium)"),
]
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
WORST_FIRST = ["bbs-03", "bbs-02", "bbs-01", "bbs-04"]
HOSTILE = "<img src=x onerror=alert(1)>"


def chromium(*args: str, tz: str = "UTC", lang: str = "en-US") -> str:
    """Run headless Chromium; its standard output."""
    assert CHROMIUM is not None
    home = Path(os.environ.get("TMPDIR", "/tmp"))
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--hide-scrollbars", f"--lang={lang}",
         f"--accept-lang={lang}", *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "TZ": tz, "HOME": str(home)})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def dump_dom(url: str, budget_ms: int = 3000, **options: Any) -> str:
    """The DOM after the page's script ran for ``budget_ms`` of virtual time."""
    return chromium(f"--virtual-time-budget={budget_ms}", "--dump-dom", url, **options)


def screenshot(url: str, path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    chromium(f"--window-size={width},{height}", "--virtual-time-budget=3000",
             f"--screenshot={path}", url)
    assert path.stat().st_size > 10_000


class Dom(HTMLParser):
    """The elements of a dumped DOM, with their attributes and text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elements.append(element)
        if tag not in ("img", "br", "meta", "link", "input", "polyline", "circle", "line",
                       "rect"):
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element["text"] += data

    def find(self, tag: str | None = None, **attrs: str) -> list[dict[str, Any]]:
        found = []
        for element in self.elements:
            if tag is not None and element["tag"] != tag:
                continue
            if all(element["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items()):
                found.append(element)
        return found

    def by_id(self, element_id: str) -> dict[str, Any]:
        matches = [e for e in self.elements if e["attrs"].get("id") == element_id]
        assert matches, f"no element #{element_id}"
        return matches[0]


@dataclass
class Stack:
    url: str
    redis: Any
    client: redis.Redis


def _wait_http(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the exporter did not answer"
            time.sleep(0.1)


@pytest.fixture
def stack(redis_server_factory: Any, command: Any, clean_env: dict[str, str],
          support: Any) -> Iterator[Stack]:
    """Redis, a collector and the exporter as processes; the fleet published."""
    server = redis_server_factory()
    env = {**clean_env, "MTBBS_REDIS_URL": server.url, "MTBBS_COLLECTOR_EVALUATE": "false",
           "MTBBS_COLLECTOR_HEARTBEAT_INTERVAL_S": "0.5",
           # The hosts' streams appear after the collector started: find them soon.
           "MTBBS_COLLECTOR_DISCOVERY_INTERVAL_S": "0.2"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    processes = [
        subprocess.Popen([command("mtbbs-collector"), "run", "--name", "collector-a"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
        subprocess.Popen([command("mtbbs-collector"), "exporter", "--port", str(port)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
    ]
    client = server.client()
    try:
        support.populate(client, collect=False)
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/metrics", processes[1])
        yield Stack(url, server, client)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        client.close()


def host_rows(dom: Dom) -> list[dict[str, Any]]:
    return [e for e in dom.find("tr") if "data-host" in e["attrs"]]


def test_the_fleet_page_shows_every_host_worst_first(stack: Stack) -> None:
    dom = Dom(dump_dom(stack.url + "/"))
    rows = host_rows(dom)
    assert [r["attrs"]["data-host"] for r in rows] == WORST_FIRST
    badges = [e for e in dom.find("span") if "data-status" in e["attrs"]]
    assert [b["text"] for b in badges] == ["CRITICAL", "WARNING", "OK", "OK"]
    # Every row has its three sparklines, each drawn from the history.
    sparks = dom.find("svg", **{"class": "spark"})
    assert len(sparks) == 3 * len(WORST_FIRST)
    assert len(dom.find("polyline")) >= 3 * len(WORST_FIRST)
    # The alerts and the collector's heartbeat.
    alerts = dom.by_id("alerts")["text"]
    assert "bbs-03" in alerts and "firing" in alerts and "pending" in alerts
    assert "collector-a" in dom.by_id("collectors")["text"]
    sharing = [e for e in dom.find("td") if e["attrs"].get("data-label") == "collectors sharing"]
    assert [e["text"] for e in sharing] == ["1"]
    # The script ran (times localized) and found the data current: no banner.
    assert dom.by_id("banner")["attrs"].get("hidden") is not None
    assert "old" not in dom.by_id("main")["attrs"].get("class", "")


def test_the_host_page_draws_charts_and_shows_hostile_text_as_text(stack: Stack) -> None:
    html = dump_dom(stack.url + "/host/bbs-04", tz="Asia/Tokyo")
    dom = Dom(html)
    # The user id is on the page as the text it is, and created no element.
    users = [e["text"] for e in dom.find("td", **{"class": "user"})]
    assert HOSTILE in users
    assert dom.find("img") == []
    assert "onerror" not in "".join(str(e["attrs"]) for e in dom.elements)
    # A chart of the day's history: a line through every point, a threshold.
    chart = dom.by_id("chart-sessions")
    assert chart["text"].strip().startswith("sessions")
    lines = list(dom.find("polyline", **{"class": "series"}))
    assert lines and max(len(e["attrs"]["points"].split()) for e in lines) == 288
    assert len(dom.find("line", **{"class": "threshold"})) == 3
    # Time labels in the viewer's zone (Tokyo, UTC+9) by the page's script.
    ticks = [e for e in dom.find("text") if "data-span" in e["attrs"]]
    assert ticks
    first = ticks[0]
    expected = time.strftime("%H:%M", time.gmtime(int(first["attrs"]["data-ms"]) / 1000
                                                  + 9 * 3600))
    assert first["text"] == expected
    assert "Asia/Tokyo" in dom.by_id("now")["text"]
    # Checks with their figures and last error; alert states; the silence.
    checks = dom.by_id("checks")["text"]
    assert "percent_used" in checks and "disk_space" in checks
    assert "disk swap on <b>Tuesday</b>" in dom.by_id("silences")["text"]


def test_japanese_when_the_browser_asks(stack: Stack) -> None:
    dom = Dom(dump_dom(stack.url + "/", lang="ja"))
    assert dom.find("html")[0]["attrs"]["lang"] == "ja"
    assert "重大" in [e["text"] for e in dom.find("span") if "data-status" in e["attrs"]]


def test_the_banner_names_redis_when_it_is_down(stack: Stack) -> None:
    stack.redis.stop()
    dom = Dom(dump_dom(stack.url + "/"))
    banner = dom.by_id("banner")
    assert banner["attrs"].get("hidden") is None
    assert "Redis" in banner["text"]


def test_the_script_keeps_the_last_data_greyed_when_redis_goes(redis_server_factory: Any,
                                                                support: Any) -> None:
    """The page is served while Redis is up; Redis stops before the script's
    first refresh, which must keep the rows, grey them and raise the banner."""
    server = redis_server_factory()
    client = server.client()
    support.populate(client)
    app = support.make_app(client)

    def stop_redis_before_refresh(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/api/fleet" and server.process is not None:
            server.stop()
        return app(environ, start_response)

    url, stop = support.serve_app(stop_redis_before_refresh)
    try:
        dom = Dom(dump_dom(url + "/"))
    finally:
        stop()
        client.close()
    assert server.process is None, "the script did not refresh"
    assert [r["attrs"]["data-host"] for r in host_rows(dom)] == WORST_FIRST
    assert "old" in dom.by_id("main")["attrs"]["class"].split()
    banner = dom.by_id("banner")
    assert banner["attrs"].get("hidden") is None and "Redis" in banner["text"]


def test_screenshots_for_the_docs(stack: Stack, tmp_path: Path) -> None:
    """The docs' fleet, host and phone-width pictures, from a live page.

    They are taken on every run and checked here; they replace the ones in
    docs/images only when MTBBS_WRITE_SCREENSHOTS=1 asks for it, so that
    running the tests leaves the checkout as it was.
    """
    shots = {"fleet.png": (stack.url + "/", 1280, 760),
             "host.png": (stack.url + "/host/bbs-04", 1280, 1400),
             "fleet-phone.png": (stack.url + "/", 390, 1100)}
    for name, (url, width, height) in shots.items():
        screenshot(url, tmp_path / name, width, height)
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
        assert (IMAGES / name).read_bytes()[:4] == b"\x89PNG", f"docs/images/{name} is missing"
    if os.environ.get("MTBBS_WRITE_SCREENSHOTS") == "1":
        for name in shots:
            shutil.copyfile(tmp_path / name, IMAGES / name)

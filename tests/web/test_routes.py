"""The web page's routes over HTTP: the JSON checked against Redis, escaping,
the security headers, 404s, Japanese, basic auth, a Redis outage, and the
exporter process refusing to expose the fleet without a password."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from collector.web.i18n import language
from collector.web.server import ExposureError, check_exposure, is_loopback
from wire.keys import KeySpace
from wire.state import parse_host_state

HOSTILE = "<img src=x onerror=alert(1)>"


def get(url: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def get_json(url: str) -> Any:
    status, _, body = get(url)
    assert status == 200, body
    return json.loads(body)


def test_api_fleet_is_the_redis_state(web: str, redis_client: redis.Redis) -> None:
    keys = KeySpace()
    fleet = get_json(web + "/api/fleet")
    stored = sorted(m.decode() for m in redis_client.zrange(keys.hosts_index(), 0, -1))
    assert sorted(h["host"] for h in fleet["hosts"]) == stored
    # Worst first, ties by id, as watch orders them.
    assert [h["host"] for h in fleet["hosts"]] == ["bbs-03", "bbs-02", "bbs-01", "bbs-04"]
    for host in fleet["hosts"]:
        state = parse_host_state(host["host"], redis_client.hgetall(keys.host(host["host"])))
        assert host["status"] == state.status.name
        assert host["disk_percent"] == state.check_fields("disk_space")["percent_used"]
        assert host["rss_mb"] == state.check_fields("memory")["process_rss_mb"]
        assert host["last_seen_ms"] == state.last_seen_ms
        sessions = redis_client.hgetall(keys.host_sessions(host["host"]))
        # The BBS's own session events when it sent any, else the agent's count.
        assert host["sessions"] == (len(sessions) if sessions else
                                    state.check_fields("sessions")["active_sessions"])
        assert host["guests"] == sum(json.loads(v)["user_id"] == "guest"
                                     for v in sessions.values())
        lines = [x.decode() for x in redis_client.lrange(keys.host_history(host["host"]), 0, 29)]
        assert host["history"]["disk"] == [float(x.split(",")[2]) for x in reversed(lines)]
        assert len(host["spark"]["disk"]) == 1
    assert fleet["counts"] == {"CRITICAL": 1, "WARNING": 1, "OK": 2}
    assert [(a["host"], a["check"], a["state"]) for a in fleet["alerts"]] == [
        ("bbs-03", "database", "firing"), ("bbs-02", "disk_space", "pending")]
    assert [c["name"] for c in fleet["collectors"]] == ["web-test"]
    assert fleet["collectors"][0]["lag"] == 0
    # The four hosts' streams (reports, and sessions for two), all its own.
    assert (fleet["collectors"][0]["streams"], fleet["collectors"][0]["sharing"]) == (6, 1)
    seconds, _ = redis_client.time()
    assert abs(fleet["now_ms"] / 1000 - int(seconds)) < 5


def test_api_host_is_the_redis_state(web: str, redis_client: redis.Redis) -> None:
    keys = KeySpace()
    host = get_json(web + "/api/host/bbs-04")
    stored = {json.loads(v)["user_id"] for v in
              redis_client.hgetall(keys.host_sessions("bbs-04")).values()}
    assert {s["user_id"] for s in host["sessions_list"]} == stored == {HOSTILE, "guest"}
    assert len(host["history"]["t"]) == 288
    assert host["history"]["t"] == sorted(host["history"]["t"])
    assert host["thresholds"] == {"sessions": 20, "disk": 90, "rss": 500}
    assert [(a["check"], a["state"], a["history"]) for a in host["alerts"]] == [
        ("telnet", "resolved", "00111100")]
    assert [s["host"] for s in host["silences"]] == ["bbs-0*"]
    assert {c["name"] for c in host["checks"]} == {"database", "sessions", "disk_space",
                                                   "memory"}
    critical = get_json(web + "/api/host/bbs-03")
    database = next(c for c in critical["checks"] if c["name"] == "database")
    assert database["status"] == "CRITICAL"
    assert database["error"] == "database disk image is malformed"
    # No filesystem path of the host is shown.
    assert all("path" not in c["fields"] for c in critical["checks"])


def test_hostile_text_is_escaped(web: str) -> None:
    status, _, body = get(web + "/host/bbs-04")
    assert status == 200
    assert "&lt;img src=x onerror=alert(1)&gt;" in body
    assert "<img" not in body
    assert "disk swap on &lt;b&gt;Tuesday&lt;/b&gt;" in body


def test_every_answer_forbids_inline_script(web: str) -> None:
    for path in ("/", "/host/bbs-01", "/api/fleet", "/api/host/bbs-01", "/static/web.js",
                 "/static/web.css", "/host/nobody", "/nothing"):
        _, headers, body = get(web + path)
        policy = headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy, path
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert headers["X-Content-Type-Options"] == "nosniff"
        if headers["Content-Type"].startswith("text/html"):
            # Scripts only as files of this server, no inline handlers.
            assert re.findall(r"<script[^>]*>", body) == [
                '<script src="/static/web.js" defer>']
            assert not re.search(r"\son[a-z]+=", body)


def test_unknown_hosts_and_paths_are_404(web: str) -> None:
    for path in ("/host/nobody", "/host/..%2Fetc", "/api/host/nobody", "/static/nope.js",
                 "/static/../server.py", "/favicon.ico"):
        status, _, _ = get(web + path)
        assert status == 404, path
    status, headers, body = get(web + "/api/host/nobody")
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"] == "unknown host"


def test_read_only(web: str) -> None:
    status, headers, _ = get(web + "/", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_metrics_beside_the_page(web: str) -> None:
    status, headers, body = get(web + "/metrics")
    assert status == 200 and "mtbbs_up 1.0" in body


def test_japanese_when_preferred(web: str) -> None:
    _, headers, body = get(web + "/", {"Accept-Language": "ja,en-US;q=0.8"})
    assert '<html lang="ja">' in body and "重大" in body and "アラート" in body
    assert headers["Vary"] == "Accept-Language"
    _, _, body = get(web + "/", {"Accept-Language": "en-US,ja;q=0.5"})
    assert '<html lang="en">' in body and "CRITICAL" in body


@pytest.mark.parametrize(("header", "expected"), [
    (None, "en"), ("", "en"), ("ja", "ja"), ("ja-JP", "ja"), ("en, ja", "en"),
    ("ja;q=0.9, en;q=0.8", "ja"), ("fr, ja;q=0.5", "ja"), ("fr", "en"), ("ja;q=0", "en"),
    ("en;q=0.5, ja;q=0.7", "ja"), ("ja;q=bogus, en", "en"),
])
def test_language(header: str | None, expected: str) -> None:
    assert language(header) == expected


def test_basic_auth(redis_client: redis.Redis, fleet: Any, support: Any) -> None:
    url, stop = support.serve_app(support.make_app(redis_client, password="s3cret-word"))
    try:
        for path in ("/", "/metrics", "/api/fleet", "/static/web.js"):
            status, headers, _ = get(url + path)
            assert status == 401, path
            assert headers["WWW-Authenticate"].startswith('Basic realm="mtbbs-monitor"')
        wrong = base64.b64encode(b"sysop:guess").decode()
        assert get(url + "/", {"Authorization": f"Basic {wrong}"})[0] == 401
        right = base64.b64encode(b"anyone:s3cret-word").decode()
        status, _, body = get(url + "/", {"Authorization": f"Basic {right}"})
        assert status == 200 and "bbs-03" in body
        assert "s3cret-word" not in body
    finally:
        stop()


def test_a_redis_outage_shows_the_banner(support: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = redis.Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    url, stop = support.serve_app(support.make_app(client))
    try:
        status, _, body = get(url + "/")
        assert status == 503
        banner = re.search(r'<div id="banner"[^>]*>([^<]*)</div>', body)
        assert banner and "Redis" in banner.group(1) and " hidden" not in banner.group(0)
        status, _, body = get(url + "/api/fleet")
        assert status == 503 and "Redis" in json.loads(body)["detail"]
        assert get(url + "/host/bbs-01")[0] == 503
    finally:
        stop()


def test_exposure_rules() -> None:
    for bind in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(bind)
        check_exposure(bind, None, False)
    for bind in ("0.0.0.0", "::", "192.0.2.1", "example.org"):
        assert not is_loopback(bind)
        with pytest.raises(ExposureError):
            check_exposure(bind, None, False)
        check_exposure(bind, "pw", False)
        check_exposure(bind, None, True)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.e2e
def test_the_exporter_refuses_an_open_bind_without_a_password(
        command: Any, clean_env: dict[str, str], redis_url: str) -> None:
    done = subprocess.run([command("mtbbs-collector"), "exporter", "--bind", "0.0.0.0",
                           "--port", str(_port())],
                          env={**clean_env, "MTBBS_REDIS_URL": redis_url},
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to serve the fleet on "
                                                   "0.0.0.0 without a password")


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["open", "password"])
def test_the_exporter_serves_an_open_bind_when_told(
        how: str, command: Any, clean_env: dict[str, str], redis_url: str,
        tmp_path: Path) -> None:
    port = _port()
    argv = [command("mtbbs-collector"), "exporter", "--bind", "0.0.0.0", "--port", str(port)]
    headers = {}
    if how == "open":
        argv.append("--open")
    else:
        secret = tmp_path / "web-password"
        secret.write_text("correct horse\n")
        secret.chmod(0o600)
        argv += ["--password-file", str(secret)]
        headers["Authorization"] = "Basic " + base64.b64encode(b"u:correct horse").decode()
    process = subprocess.Popen(argv, env={**clean_env, "MTBBS_REDIS_URL": redis_url},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                status, _, body = get(f"http://127.0.0.1:{port}/", headers)
                break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the exporter did not answer"
                time.sleep(0.1)
        assert status == 200 and "MTBBS" in body
        if how == "password":
            assert get(f"http://127.0.0.1:{port}/")[0] == 401
    finally:
        process.terminate()
        process.wait(10)
    assert process.returncode == 0

"""The installed ``mtbbs-health-check``: exit codes, layouts, and every use
of it in the seed's cron, Nagios and Zabbix sections."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from wire.keys import KeySpace
from wire.messages import SessionInfo
from wire.state import session_text

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[3]
JQ = shutil.which("jq")
needs_jq = pytest.mark.skipif(JQ is None, reason="jq is not installed")
SEED_SESSIONS = [("192.168.1.100:54321", "test_user"), ("192.168.1.101:54322", "guest"),
                 ("192.168.1.102:54323", "admin")]


@pytest.fixture
def host(mtbbs_db: Path, fake_bbs, redis_url: str, redis_client: redis.Redis,
         command, clean_env: dict[str, str], tmp_path: Path) -> Any:
    """A healthy BBS host: database, running process, three sessions in Redis."""
    for offset, (client_id, user) in enumerate(SEED_SESSIONS):
        redis_client.hset(KeySpace().host_sessions("bbs-01"), client_id,
                          session_text(SessionInfo(client_id, user, "logged_in",
                                                   time.time() - 100 + offset)))

    class Host:
        args = ["--db", str(mtbbs_db), "--data-dir", str(mtbbs_db.parent), "--pid",
                str(fake_bbs.pid), "--host", "bbs-01", "--redis-url", redis_url,
                # Make the verdict independent of how full this machine is.
                "--disk-threshold", "100", "--system-memory-threshold", "100"]
        env = clean_env
        cwd = tmp_path
        binary = command("mtbbs-health-check")

        def run(self, *extra: str, args: list[str] | None = None) -> subprocess.CompletedProcess:
            return subprocess.run([self.binary, *(self.args if args is None else args), *extra],
                                  capture_output=True, text=True, env=self.env, cwd=self.cwd,
                                  timeout=60)

        def shell(self, script: str) -> subprocess.CompletedProcess:
            return subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                                  env=self.env, cwd=self.cwd, timeout=120)

        @property
        def line(self) -> str:
            return " ".join([self.binary, *self.args])

    return Host()


FIGURE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+|\d+(?:\.\d+)?")


def layout(seed_line: str) -> re.Pattern[str]:
    """A seed example line with its figures (numbers, the timestamp) made variable."""
    parts, position = [], 0
    for figure in FIGURE.finditer(seed_line):
        parts.append(re.escape(seed_line[position:figure.start()]))
        parts.append(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}" if "T" in figure.group()
                     else r"\d+(?:\.\d+)?")
        position = figure.end()
    parts.append(re.escape(seed_line[position:]))
    return re.compile("".join(parts))


def assert_layout(output: str, example: str) -> None:
    got, want = output.splitlines(), example.splitlines()
    assert len(got) == len(want), output
    for ours, seed in zip(got, want, strict=True):
        assert layout(seed).fullmatch(ours), f"{ours!r} does not have the layout of {seed!r}"


def test_exit_0_standard_layout(host, seed_examples: dict[str, str]) -> None:
    done = host.run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    assert_layout(done.stdout, seed_examples["standard"])


def test_exit_0_verbose_layout(host, seed_examples: dict[str, str]) -> None:
    done = host.run("--verbose")
    assert done.returncode == 0, done.stdout
    assert_layout(done.stdout, seed_examples["verbose"])
    assert "  - Tables: 8" in done.stdout.splitlines()
    # The session lines are the seed's, since these are the seed's sessions.
    for client_id, user in SEED_SESSIONS:
        assert f"    - {client_id}: user={user}, state=logged_in" in done.stdout.splitlines()
    assert_layout(host.run("-v").stdout, seed_examples["verbose"])


def test_exit_0_json(host, seed_examples: dict[str, str]) -> None:
    done = host.run("--json")
    assert done.returncode == 0
    ours, seed = json.loads(done.stdout), json.loads(seed_examples["json"])
    assert list(ours) == list(seed)
    assert list(ours["health"]) == list(seed["health"])
    for name in ("database", "sessions", "disk_space", "memory"):
        assert list(ours["health"][name])[:len(seed["health"][name])] == list(
            seed["health"][name])
        for key, value in seed["health"][name].items():
            assert type(ours["health"][name][key]) is type(value), f"{name}.{key}"
    assert (ours["exit_code"], ours["status"]) == (0, "OK")
    assert ours["health"]["database"]["table_count"] == 8
    assert ours["health"]["sessions"]["active_sessions"] == 3


def test_exit_0_quiet_prints_nothing(host) -> None:
    for flags in (["--quiet"], ["-q"], ["--quiet", "--json"]):
        done = host.run(*flags)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), flags


@pytest.mark.parametrize(
    ("flags", "section"),
    [(["--disk-threshold", "0"], "Disk Space"),
     (["--rss-threshold", "1"], "Memory"),
     (["--max-same-ip", "0"], "Sessions"),
     (["--max-sessions", "2"], "Sessions")],
)
def test_exit_1_warning(host, flags: list[str], section: str) -> None:
    done = host.run(*flags)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{section}: ⚠️ WARNING" in done.stdout.splitlines()
    assert done.stdout.splitlines()[-1] == "⚠️ System Status: WARNING"
    quiet = host.run("--quiet", *flags)
    assert quiet.returncode == 1
    assert f"{section}: ⚠️ WARNING" in quiet.stdout.splitlines()
    assert "Database:" not in quiet.stdout


def test_exit_1_bbs_process_not_found(host, fake_bbs) -> None:
    fake_bbs.stop()
    done = host.run("--json")
    assert done.returncode == 1
    memory = json.loads(done.stdout)["health"]["memory"]
    assert memory["healthy"] is False and memory["process_rss_mb"] is None
    assert "is not running" in memory["error"]


def test_exit_2_database(host, tmp_path: Path) -> None:
    missing = host.run("--db", str(tmp_path / "absent.db"))
    assert missing.returncode == 2
    assert "Database: ❌ CRITICAL" in missing.stdout.splitlines()
    assert missing.stdout.splitlines()[-1] == "❌ System Status: CRITICAL"
    # A database problem outranks a warning.
    both = host.run("--db", str(tmp_path / "absent.db"), "--disk-threshold", "0", "--json")
    assert both.returncode == 2
    assert json.loads(both.stdout)["status"] == "CRITICAL"


def test_exit_2_corrupted_database(host, mtbbs_db: Path) -> None:
    with open(mtbbs_db, "r+b") as handle:
        handle.seek(0)
        handle.write(b"garbage" * 20)
    done = host.run("--quiet")
    assert done.returncode == 2
    assert "  - Error: Not an SQLite database: file is not a database" in done.stdout


def test_unreachable_redis_is_never_critical(host, unreachable_redis_url: str) -> None:
    done = host.run("--redis-url", unreachable_redis_url)
    assert done.returncode == 0, done.stdout
    assert "Sessions: ❔ UNAVAILABLE" in done.stdout.splitlines()
    assert "  - Error: Redis unreachable: " in done.stdout
    document = json.loads(host.run("--json", "--redis-url", unreachable_redis_url).stdout)
    assert document["health"]["sessions"]["available"] is False
    assert document["health"]["sessions"]["healthy"] is True
    assert document["exit_code"] == 0


@pytest.mark.parametrize(
    "extra",
    [["--config", "/nonexistent/mtbbs.toml"], ["--disk-threshold", "lots"],
     ["--disk-threshold", "150"], ["--no-such-flag"], ["--redis-url", "http://x"]],
)
def test_exit_3_script_failure(host, extra: list[str]) -> None:
    done = host.run(*extra)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].startswith(("configuration error:",
                                                           "mtbbs-health-check: error:"))


def test_exit_3_bad_config_file_is_one_line(host, tmp_path: Path) -> None:
    config = tmp_path / "mtbbs.toml"
    config.write_text("[checks]\nmax_sessions = 'many'\n")
    done = host.run("--config", str(config))
    assert done.returncode == 3
    assert done.stderr.splitlines() == [
        "configuration error: checks.max_sessions: 'many' is not a valid int"]


def test_config_file_and_environment(host, tmp_path: Path) -> None:
    config = tmp_path / "mtbbs.toml"
    config.write_text("[checks]\nmax_sessions = 2\n")
    done = host.run("--config", str(config), "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["health"]["sessions"]["max_sessions"] == 2
    host.env = {**host.env, "MTBBS_CHECKS_MAX_SESSIONS": "10"}
    done = host.run("--config", str(config), "--json")
    assert done.returncode == 0
    assert host.run("--config", str(config), "--max-sessions", "1").returncode == 1


# -- the seed's uses, as written (with the installed command) -------------------


def test_seed_wrapper_script_from_the_repository_root(host) -> None:
    done = subprocess.run([sys.executable, "scripts/health_check.py", "--json", *host.args],
                          capture_output=True, text=True, env=host.env, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "OK"


def test_seed_monitoring_script_exit_codes(host, tmp_path: Path) -> None:
    script = f"""
{host.line} --quiet "$@"
EXIT_CODE=$?
if [ $EXIT_CODE -eq 2 ]; then
    echo "CRITICAL: MTBBS health check failed!"
elif [ $EXIT_CODE -eq 1 ]; then
    echo "WARNING: MTBBS has warnings"
fi
exit $EXIT_CODE
"""
    path = tmp_path / "monitor.sh"
    path.write_text(script)
    assert host.shell(f"bash {path}").stdout == ""
    warned = host.shell(f"bash {path} --disk-threshold 0")
    assert (warned.returncode, warned.stdout.splitlines()[-1]) == (
        1, "WARNING: MTBBS has warnings")
    failed = host.shell(f"bash {path} --db {tmp_path}/absent.db")
    assert (failed.returncode, failed.stdout.splitlines()[-1]) == (
        2, "CRITICAL: MTBBS health check failed!")


def test_seed_cron_line_logs_only_problems(host, tmp_path: Path) -> None:
    log = tmp_path / "mtbbs_health.log"
    cron = f"cd {host.cwd} && {host.line} --quiet >> {log} 2>&1"
    assert host.shell(cron).returncode == 0
    assert log.read_text() == ""
    assert host.shell(cron).returncode == 0  # run again: still silent
    assert log.read_text() == ""
    warned = f"cd {host.cwd} && {host.line} --disk-threshold 0 --quiet >> {log} 2>&1"
    assert host.shell(warned).returncode == 1
    assert "Disk Space: ⚠️ WARNING" in log.read_text()


NAGIOS = """
OUTPUT=$({line} --json "$@" 2>&1)
EXIT_CODE=$?
case $EXIT_CODE in
    0) echo "OK - MTBBS is healthy"; exit 0 ;;
    1) echo "WARNING - MTBBS has warnings | $OUTPUT"; exit 1 ;;
    2) echo "CRITICAL - MTBBS is unhealthy | $OUTPUT"; exit 2 ;;
    *) echo "UNKNOWN - Health check failed | $OUTPUT"; exit 3 ;;
esac
"""


@pytest.mark.parametrize(
    ("flags", "code", "first"),
    [("", 0, "OK - MTBBS is healthy"),
     ("--rss-threshold 1", 1, "WARNING - MTBBS has warnings | {"),
     ("--db /nonexistent/mtbbs.db", 2, "CRITICAL - MTBBS is unhealthy | {"),
     ("--config /nonexistent.toml", 3, "UNKNOWN - Health check failed | configuration error")],
)
def test_seed_nagios_plugin(host, tmp_path: Path, flags: str, code: int, first: str) -> None:
    plugin = tmp_path / "check_mtbbs"
    plugin.write_text(NAGIOS.format(line=host.line))
    done = host.shell(f"bash {plugin} {flags}")
    assert done.returncode == code
    assert done.stdout.splitlines()[0].startswith(first), done.stdout


ZABBIX = {
    "mtbbs.health.status": ".status",
    "mtbbs.health.database": ".health.database.healthy",
    "mtbbs.health.disk_percent": ".health.disk_space.percent_used",
    "mtbbs.health.memory_mb": ".health.memory.process_rss_mb",
    "mtbbs.health.sessions": ".health.sessions.active_sessions",
}


def json_path(document: Any, path: str) -> Any:
    for part in path.strip(".").split("."):
        document = document[part]
    return document


def check_zabbix_value(key: str, text: str) -> None:
    if key == "mtbbs.health.status":
        assert text == "OK"
    elif key == "mtbbs.health.database":
        assert text == "true"
    elif key == "mtbbs.health.sessions":
        assert text == "3"
    else:
        assert float(text) >= 0, (key, text)


def test_seed_zabbix_paths_with_python_json(host) -> None:
    document = json.loads(host.run("--json").stdout)
    for key, path in ZABBIX.items():
        value = json_path(document, path)
        check_zabbix_value(key, json.dumps(value) if not isinstance(value, str) else value)


@needs_jq
@pytest.mark.parametrize("key", list(ZABBIX))
def test_seed_zabbix_user_parameters(host, key: str) -> None:
    line = f"cd {host.cwd} && {host.line} --json 2>/dev/null | jq -r '{ZABBIX[key]}'"
    done = host.shell(line)
    assert done.returncode == 0, done.stderr
    check_zabbix_value(key, done.stdout.strip())


@needs_jq
def test_seed_zabbix_through_the_wrapper_script(host) -> None:
    wrapper = f"cd {REPO} && {sys.executable} scripts/health_check.py --json " \
              f"{' '.join(host.args[:-4])} --disk-threshold 100 --system-memory-threshold 100"
    done = host.shell(f"{wrapper} 2>/dev/null | jq -r '.health.disk_space.percent_used'")
    assert float(done.stdout.strip()) >= 0


@needs_jq
def test_seed_metrics_collection(host, tmp_path: Path, fake_bbs) -> None:
    metrics = tmp_path / "mtbbs_metrics.csv"
    script = f"""
TIMESTAMP=$(date '+%Y-%m-%d %H:%M:%S')
HEALTH=$({host.line} --json "$@" 2>/dev/null)
SESSIONS=$(echo "$HEALTH" | jq -r '.health.sessions.active_sessions')
DISK_PERCENT=$(echo "$HEALTH" | jq -r '.health.disk_space.percent_used')
MEMORY_MB=$(echo "$HEALTH" | jq -r '.health.memory.process_rss_mb // 0')
echo "$TIMESTAMP,$SESSIONS,$DISK_PERCENT,$MEMORY_MB" >> "{metrics}"
"""
    path = tmp_path / "collect_metrics.sh"
    path.write_text(script)
    assert host.shell(f"bash {path}").returncode == 0
    fake_bbs.stop()  # no BBS process: the `// 0` default of the seed applies
    assert host.shell(f"bash {path}").returncode == 0
    rows = [line.split(",") for line in metrics.read_text().splitlines()]
    assert [row[1] for row in rows] == ["3", "3"]
    assert all(float(row[2]) >= 0 for row in rows)
    assert float(rows[0][3]) >= 40 and rows[1][3] == "0"


def test_seed_alert_script_condition(host) -> None:
    # `if [ $EXIT_CODE -ge 1 ]` must fire on a warning and stay quiet when healthy.
    script = f'{host.line} --json "$@" >/dev/null 2>&1; [ $? -ge 1 ] && echo ALERT || echo fine'
    assert host.shell(script).stdout.strip() == "fine"
    assert host.shell(f"set -- --disk-threshold 0; {script}").stdout.strip() == "ALERT"


# -- a run imports only what it needs --------------------------------------------

IMPORTED_AFTER_A_RUN = """
import sys
from agent.healthcheck_cli import main
code = main(sys.argv[1:])
print(sorted(set(sys.modules) & {'redis', 'tomllib', 'msgspec', 'msgpack', 'urllib.request'}))
"""


def without_redis_url(args: list[str]) -> list[str]:
    position = args.index("--redis-url")
    return args[:position] + args[position + 2:]


def test_without_a_session_source_redis_is_neither_imported_nor_asked(host) -> None:
    args = without_redis_url(host.args)
    done = subprocess.run([sys.executable, "-c", IMPORTED_AFTER_A_RUN, *args, "--json"],
                          capture_output=True, text=True, env=host.env, cwd=host.cwd,
                          timeout=60)
    document, imported = done.stdout.rsplit("\n", 2)[0], done.stdout.splitlines()[-1]
    assert imported == "[]", done.stderr
    sessions = json.loads(document)["health"]["sessions"]
    assert sessions["available"] is False and sessions["healthy"] is True
    assert sessions["error"] == "Redis not configured: sessions unknown"


def test_a_session_source_from_the_config_file_reads_the_sessions(host, tmp_path: Path,
                                                                  redis_url: str) -> None:
    args = without_redis_url(host.args)
    config = tmp_path / "mtbbs.toml"
    config.write_text(f'[redis]\nurl = "{redis_url}"\n')
    done = host.run("--config", str(config), "--json", args=args)
    assert json.loads(done.stdout)["health"]["sessions"]["active_sessions"] == 3
    host.env = {**host.env, "MTBBS_REDIS_URL": redis_url}
    done = host.run("--json", args=args)
    assert json.loads(done.stdout)["health"]["sessions"]["active_sessions"] == 3

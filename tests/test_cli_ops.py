"""The operations side of the `protobase` command: log options, progress bars, status errors.

- ``--log-format json`` writes one JSON object per line (the formatter, and
  a real `protobase node` started the way `cluster up` starts it);
- bad ``--log-level`` values (option or environment) are usage errors;
- pack, fsck, backup, backup verify and restore draw bars that reach their
  totals on a console that is a terminal (a rich Console writing to a
  StringIO, injected through `main(progress_console=...)`), and nothing on
  one that is not;
- `cluster status` says what went wrong on a 401 (the live cluster's
  tables are in tests/cluster/test_cluster_status_cli.py).
"""

from __future__ import annotations

import datetime as dt
import http.server
import io
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import free_port_base
from rich.console import Console

from protobase import DBObject, ObjectSpace, StandaloneFileStorage
from protobase.cli import main
from protobase.cluster_cli import start_node, stop_processes, wait_ready, write_configs
from protobase.logs import JsonFormatter, configure_logging
from protobase.progress_bars import Phase, ProgressBars

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(autouse=True)
def root_logger_kept() -> Iterator[None]:
    """`main` configures the root logger: put it back as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def small_database(path: Path) -> Path:
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        db = space.new_database("people")
        for round_ in range(4):
            with db.transaction() as tr:
                people = tr.new_dictionary().update(
                    {k: DBObject(name=f"p{k}", round=round_) for k in range(300)}
                )
                tr.set_root_object("people", people)
    return path


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(force_terminal=True, file=out, width=120), out


def final_bars(drawn: str) -> dict[str, str]:
    """Description -> the last line drawn for that bar (colour codes removed)."""
    lines: dict[str, str] = {}
    for line in re.split(r"[\r\n]", ANSI.sub("", drawn)):
        match = re.match(r"(\S+: .+?) +━", line)
        if match:
            lines[match.group(1)] = line
    return lines


def assert_complete(line: str) -> None:
    assert "100%" in line, line
    amount = r"[\d.,]+(?: bytes| [kMGT]B)?"
    amounts = re.search(rf"({amount}) of ({amount})", line)
    assert amounts and amounts.group(1) == amounts.group(2), line


# -- logs -------------------------------------------------------------------------


def test_json_formatter_writes_time_level_logger_message_extras_and_exc_info() -> None:
    logger = logging.getLogger("protobase.test")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logger.makeRecord(
            logger.name,
            logging.ERROR,
            __file__,
            1,
            "commit %d failed",
            (7,),
            sys.exc_info(),
            extra={"space": "shop", "attempt": 2, "path": Path("/x")},
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    when = dt.datetime.fromisoformat(entry["time"])
    assert when.utcoffset() == dt.timedelta(0)
    assert abs(when.timestamp() - record.created) < 0.001
    assert entry["level"] == "error"
    assert entry["logger"] == "protobase.test"
    assert entry["message"] == "commit 7 failed"
    assert entry["space"] == "shop" and entry["attempt"] == 2 and entry["path"] == "/x"
    assert "Traceback" in entry["exc_info"] and "ValueError: boom" in entry["exc_info"]
    assert "args" not in entry and "msg" not in entry  # a record's own attributes stay out


def test_configure_logging_replaces_only_its_own_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("text", "info", stream=first)
    configure_logging("json", "debug", stream=second)
    logging.getLogger("protobase.test").debug("hello %s", "there")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["message"] == "hello there"


def test_a_node_started_with_log_options_logs_json_lines(tmp_path: Path) -> None:
    """What `cluster up --log-format json` does for each node: ``protobase --log-format
    json node``; the node's startup line is a JSON object."""
    base = free_port_base(1)
    (config,) = write_configs(tmp_path, 1, base, 1)
    log = tmp_path / "node1.log"
    process = start_node(config, log, ["--log-format", "json", "--log-level", "debug"])
    try:
        wait_ready([f"http://127.0.0.1:{base + 1}"])
    finally:
        stop_processes([process])
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    serving = [e for e in entries if "serves http://" in e["message"]]
    assert serving, entries
    assert serving[0]["logger"] == "protobase.node" and serving[0]["level"] == "info"
    assert any(e["level"] == "debug" for e in entries), entries
    for entry in entries:
        dt.datetime.fromisoformat(entry["time"])


def test_a_bad_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--log-level", "loud", "inspect", "nowhere"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "--log-level" in error and "'loud'" in error and "warning" in error, error


def test_a_bad_log_level_in_the_environment_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROTOBASE_LOG_LEVEL", "chatty")
    with pytest.raises(SystemExit) as exited:
        main(["inspect", "nowhere"])
    assert exited.value.code == 2
    assert "PROTOBASE_LOG_LEVEL='chatty' is not a log level" in capsys.readouterr().err


def test_log_options_are_case_insensitive_and_the_environment_is_a_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROTOBASE_LOG_FORMAT", "json")
    path = small_database(tmp_path / "db")
    assert main(["--log-level", "DEBUG", "inspect", str(path)]) == 0
    logging.getLogger("protobase.test").debug("from the test")
    lines = capsys.readouterr().err.splitlines()
    assert json.loads(lines[-1])["message"] == "from the test"


# -- progress bars ----------------------------------------------------------------


def test_fsck_and_pack_draw_one_bar_per_phase_up_to_its_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = small_database(tmp_path / "db")
    console, drawn = terminal()
    assert main(["fsck", str(path)], progress_console=console) == 0
    assert capsys.readouterr().out.endswith("clean\n")  # stdout: the report only
    bars = final_bars(drawn.getvalue())
    assert set(bars) == {"fsck: WAL records", "fsck: reachable atoms"}, bars
    assert "kB of" in bars["fsck: WAL records"] and "atoms" in bars["fsck: reachable atoms"]
    for line in bars.values():
        assert_complete(line)

    console, drawn = terminal()
    assert main(["pack", str(path)], progress_console=console) == 0
    bars = final_bars(drawn.getvalue())
    assert set(bars) == {"pack: reachable atoms", "pack: rewriting the WAL"}, bars
    assert "atoms" in bars["pack: reachable atoms"] and "kB" in bars["pack: rewriting the WAL"]
    for line in bars.values():
        assert_complete(line)


def test_backup_verify_and_restore_draw_bars_up_to_their_totals(
    tmp_path: Path, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = small_database(tmp_path / "db")
    location = f"s3://{s3_bucket}/db"
    commands = {
        "backup: WAL segments": ["backup", str(path), location],
        "verify: backup objects": ["backup", "verify", location],
        "restore: backup objects": ["restore", location, str(tmp_path / "restored")],
    }
    for description, argv in commands.items():
        console, drawn = terminal()
        assert main(["--log-format", "json", *argv], progress_console=console) == 0
        bars = final_bars(drawn.getvalue())
        assert list(bars) == [description], bars
        assert "kB" in bars[description]
        assert_complete(bars[description])
        captured = capsys.readouterr()
        assert "━" not in captured.out and "\x1b[" not in captured.out
        for line in captured.err.splitlines():  # boto's records, if any, as JSON lines
            json.loads(line)


def test_no_bar_is_drawn_when_the_console_is_not_a_terminal(tmp_path: Path) -> None:
    path = small_database(tmp_path / "db")
    drawn = io.StringIO()
    assert main(["fsck", str(path)], progress_console=Console(file=drawn)) == 0
    assert drawn.getvalue() == ""


def test_a_phased_callback_starts_the_next_phase_when_counts_restart_or_jump() -> None:
    console, drawn = terminal()
    with ProgressBars(console, auto_refresh=False) as bars:
        walk_then_rewrite = bars.callback(Phase("a: atoms", "atoms"), Phase("a: bytes", "bytes"))
        # A walk whose total shrinks at its end, then a rewrite whose first
        # record is larger than the walk's last total.
        for done, total in [(2, 10), (8, 9), (9, 9), (500, 4000), (4000, 4000)]:
            walk_then_rewrite(done, total)
        single = bars.callback(Phase("b: bytes", "bytes"))
        for done, total in [(0, 100), (50, 100), (100, 100), (100, 100)]:
            single(done, total)
    tasks = {task.description: task for task in bars.progress.tasks}
    assert (tasks["a: atoms"].completed, tasks["a: atoms"].total) == (9, 9)
    assert (tasks["a: bytes"].completed, tasks["a: bytes"].total) == (4000, 4000)
    assert (tasks["b: bytes"].completed, tasks["b: bytes"].total) == (100, 100)
    assert "4.0 kB of 4.0 kB" in ANSI.sub("", drawn.getvalue())


# -- cluster status: errors -------------------------------------------------------


class _Refusing(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "unauthorized"}')

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_cluster_status_says_when_the_token_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token = tmp_path / "client.token"
    token.write_text("wrong\n")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert main(["cluster", "status", url, "--token-file", str(token)]) == 1
    finally:
        server.shutdown()
        server.server_close()
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert "refused the client token (401)" in line and "--token-file" in line, line

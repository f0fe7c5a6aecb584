"""`c2cq events tail | show` read the log the scheduler writes."""

from __future__ import annotations

import json

from c2cq.cli import main
from c2cq.rundir import RunDir
from c2cq.services.scheduler.journal import log_path

from .test_core_history import history
from .test_journal import write


def test_show_and_tail(tmp_path, capsys):
    write(log_path(RunDir(tmp_path)), history())
    assert main(["--home", str(tmp_path), "events", "show", "r1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "submitted r1 model=m-a" in lines[0]
    assert "e1 tokens_produced r1~1 index=2 n=1" in lines[-1]
    assert main(["--home", str(tmp_path), "events", "tail", "-n", "3", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["t"] for r in rows] == ["executor_said", "submitted", "tick"]


def test_missing_log_and_unknown_request_are_errors(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "events", "tail"]) == 1
    assert "no scheduler event log" in capsys.readouterr().err
    write(log_path(RunDir(tmp_path)), history())
    assert main(["--home", str(tmp_path), "events", "show", "nope"]) == 1

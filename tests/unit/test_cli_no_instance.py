"""With no instance running in the home, `c2cq generate` and `c2cq status` say so at once and name
`c2cq up` (they look at the run dir instead of waiting for a scheduler that is not there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from c2cq.rundir import RunDir
from c2cq.testing import c2cq


def _no_client_addr(monkeypatch):
    monkeypatch.delenv("C2CQ_CLIENT_ADDR", raising=False)


def test_generate_and_status_with_nothing_running(tmp_path, monkeypatch):
    _no_client_addr(monkeypatch)
    home = tmp_path / "h"
    p = c2cq(home, "generate", "--model", "smollm2-135m", "hello", check=False, timeout=60)
    assert p.returncode == 1
    assert "no c2cq instance runs in" in p.stderr and str(home) in p.stderr and "`c2cq up`" in p.stderr, p.stderr
    assert "has not answered" not in p.stderr  # it did not wait for the scheduler's silence
    s = c2cq(home, "status", check=False, timeout=60)
    assert s.returncode == 0 and "not running" in s.stdout and "`c2cq up`" in s.stdout, s.stdout
    assert json.loads(c2cq(home, "status", "--json", timeout=60).stdout)["running"] is False


def test_a_stale_pid_file_is_nothing_running(tmp_path, monkeypatch):
    _no_client_addr(monkeypatch)
    home = tmp_path / "h"
    rd = RunDir.from_env(home)
    rd.ensure()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    rd.pid_file.write_text(str(gone.pid))  # a supervisor that died without cleaning up
    p = c2cq(home, "generate", "--model", "m", "hello", check=False, timeout=60)
    assert p.returncode == 1 and "no c2cq instance runs" in p.stderr and "`c2cq up`" in p.stderr, p.stderr


def test_a_failed_scheduler_is_named(tmp_path, monkeypatch):
    _no_client_addr(monkeypatch)
    home = tmp_path / "h"
    rd = RunDir.from_env(home)
    rd.ensure()
    rd.pid_file.write_text(str(os.getpid()))  # a live process stands in for the supervisor
    rd.state_file.write_text(json.dumps({"stopping": False, "services": [
        {"name": "catalog", "state": "running", "pid": 1, "restarts": 0},
        {"name": "scheduler", "state": "failed", "pid": None, "restarts": 5, "reason": "exited 1; 5 restarts in 60 s"},
    ]}))
    p = c2cq(home, "generate", "--model", "m", "hello", check=False, timeout=60)
    assert p.returncode == 1, p.stderr
    assert "its scheduler failed (exited 1; 5 restarts in 60 s)" in p.stderr and "scheduler.log" in p.stderr, p.stderr
    assert "`c2cq up`" in p.stderr

"""Where a home's shared-memory folder is: what `c2cq up` recorded, else $C2CQ_SHM_ROOT, else /dev/shm;
and `c2cq up --shm-root` refuses a folder it cannot use before starting anything."""

from __future__ import annotations

import subprocess
import sys

from c2cq.rundir import RunDir


def test_shm_root_precedence(tmp_path, monkeypatch):
    rd = RunDir.from_env(tmp_path / "home")
    monkeypatch.delenv("C2CQ_SHM_ROOT", raising=False)
    assert rd.shm_dir == RunDir.from_env(tmp_path / "home").shm_root / f"c2cq-{rd.instance}"
    assert str(rd.shm_root) == "/dev/shm"
    monkeypatch.setenv("C2CQ_SHM_ROOT", str(tmp_path / "env"))
    assert rd.shm_root == tmp_path / "env"
    rd.run.mkdir(parents=True)
    rd.shm_root_file.write_text(f"{tmp_path / 'recorded'}\n")  # the running instance's choice wins
    assert rd.shm_dir == tmp_path / "recorded" / f"c2cq-{rd.instance}"


def test_up_refuses_a_shm_root_that_is_not_a_folder(tmp_path):
    home = tmp_path / "h"
    p = subprocess.run([sys.executable, "-m", "c2cq.cli", "--home", str(home), "up", "--backend", "sim",
                        "--slices", "1", "--shm-root", str(tmp_path / "missing"), "--detach"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "no such folder" in p.stderr, p.stderr
    assert not (home / "run" / "supervisor.pid").exists()


def test_the_run_and_socket_dirs_are_private(tmp_path):
    import os
    import stat

    import pytest

    from c2cq.errors import ConfigError
    from c2cq.rundir import private_dir

    old = os.umask(0o022)
    try:
        rd = RunDir.from_env(tmp_path / "home")
        rd.sock_dir.mkdir(parents=True, mode=0o755)  # left wide by an older version
        rd.ensure()
    finally:
        os.umask(old)
    for d in (rd.run, rd.log_dir, rd.sock_dir):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a folder owned by this user"):
        private_dir(tmp_path / "file")
    if os.getuid() == 0:  # root can make a folder another user owns: the /tmp squatting case
        os.mkdir(tmp_path / "theirs")
        os.chown(tmp_path / "theirs", 12345, 12345)
        with pytest.raises(ConfigError, match="not a folder owned by this user"):
            private_dir(tmp_path / "theirs")

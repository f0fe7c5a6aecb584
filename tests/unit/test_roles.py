"""`c2cq up --role control|node` start the same services as one host, wired with other addresses;
`c2cq run SERVICE` runs one of them; a node's catalog plans its replica of the registry."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from c2cq import cli
from c2cq.errors import ConfigError
from c2cq.schemas.catalog import ModelFiles, RegisterModel
from c2cq.services.catalog.registry import Entry
from c2cq.services.catalog.sim_models import sim_model
from c2cq.services.catalog.uplink import plan


def config(capsys, tmp_path, *args) -> dict[str, list[str]]:
    assert cli.main(["--home", str(tmp_path / "home"), "up", "--print-config", "--shm-root", str(tmp_path), *args]) == 0
    return {s["name"]: s["argv"][3:] for s in json.loads(capsys.readouterr().out)["services"]}


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_control_runs_the_registry_the_scheduler_on_tcp_and_the_gateway(capsys, tmp_path):
    got = config(capsys, tmp_path, "--role", "control", "--listen", "tcp://10.0.0.5")
    assert list(got) == ["catalog", "scheduler", "gateway"]
    assert "--no-publish" in got["catalog"]
    assert flag(got["scheduler"], "--executors") == "tcp://10.0.0.5:7101"
    assert flag(got["scheduler"], "--catalogs") == "tcp://10.0.0.5:7102"
    assert flag(got["scheduler"], "--key-role") == "control" and "--insecure" not in got["scheduler"]


def test_a_node_runs_its_catalog_and_an_executor_per_slice_dialling_the_control_plane(capsys, tmp_path):
    got = config(capsys, tmp_path, "--role", "node", "--join", "tcp://ctl:7201", "--backend", "cpu", "--slices", "2",
                 "--node-name", "gpu-1", "--insecure")
    assert list(got) == ["catalog", "exec-0", "exec-1"]
    assert flag(got["catalog"], "--join") == "tcp://ctl:7202" and flag(got["catalog"], "--host") == "gpu-1"
    for i in range(2):
        argv = got[f"exec-{i}"]
        assert (flag(argv, "--id"), flag(argv, "--join"), flag(argv, "--host")) == (f"gpu-1-exec-{i}", "tcp://ctl:7201",
                                                                                   "gpu-1")
        assert flag(argv, "--key-role") == "node" and "--insecure" in argv


def test_a_node_passes_the_kv_flags_to_its_executors(capsys, tmp_path):
    got = config(capsys, tmp_path, "--role", "node", "--join", "tcp://ctl:7201", "--backend", "cpu", "--slices", "2",
                 "--insecure", "--kv-policy", "rotate", "--kv-blocks", "40", "--kv-host-blocks", "512")
    for i in range(2):
        argv = got[f"exec-{i}"]
        assert (flag(argv, "--kv-policy"), flag(argv, "--kv-blocks"), flag(argv, "--kv-host-blocks")) == (
            "rotate", "40", "512")
    assert cli.main(["--home", str(tmp_path / "home"), "up", "--print-config", "--role", "node", "--join",
                     "tcp://ctl:7201", "--backend", "cpu", "--insecure", "--kv-policy", "rotate"]) == 1
    assert "--kv-host-blocks" in capsys.readouterr().err


def test_one_host_is_unchanged(capsys, tmp_path):
    got = config(capsys, tmp_path, "--backend", "sim", "--slices", "1", "--no-http")
    assert list(got) == ["catalog", "scheduler", "exec-0"]
    assert "--executors" not in got["scheduler"] and "--join" not in got["exec-0"]


def test_a_node_without_a_join_address_is_refused(tmp_path):
    from c2cq.supervisor.roles import catalog_join

    with pytest.raises(ConfigError):
        catalog_join("ctl:7101")
    assert cli.main(["--home", str(tmp_path), "up", "--role", "node", "--print-config", "--shm-root", str(tmp_path)]) == 1


def test_c2cq_run_passes_its_arguments_to_the_service(tmp_path):
    p = subprocess.run([sys.executable, "-m", "c2cq.cli", "run", "executor", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and "--join" in p.stdout and "C2CQ_EXECUTOR_ID" in p.stdout, p.stderr
    p = subprocess.run([sys.executable, "-m", "c2cq.cli", "--home", str(tmp_path), "run", "scheduler",
                        "--executors", "tcp://127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no CURVE secret key for role 'control'" in p.stderr, p.stderr  # tcp, no keys


def test_a_node_catalog_replicates_the_registry():
    a, b, c = (sim_model(n, 576, 30, 1536, 49152) for n in ("a", "b", "c"))
    local = {"a": Entry(a, "/store/a.c2cqm"), "b": Entry(b, "/store/old-b.c2cqm"), "gone": Entry(c, "/store/g")}
    files = ModelFiles(files=(RegisterModel(info=a, path="a.c2cqm"), RegisterModel(info=b, path="b.c2cqm"),
                              RegisterModel(info=c, path="c.c2cqm")))
    adds, removes = plan(local, files, lambda p: f"/store/{p}")
    assert removes == ["b", "gone"]  # b's file changed
    assert [(f.info.name, f.path) for f in adds] == [("b", "/store/b.c2cqm"), ("c", "/store/c.c2cqm")]

"""`c2cq up`'s gateway flags, read from --print-config (nothing is started)."""

from __future__ import annotations

import argparse
import json

from c2cq.cli_run import gateway_spec
from c2cq.testing import c2cq


def config(home, *flags):
    return json.loads(c2cq(home, "up", "--backend", "sim", "--slices", "1", "--print-config", *flags).stdout)


def test_gateway_is_a_child_with_its_address_and_a_hidden_key(home):
    doc = config(home, "--http", "127.0.0.1:0", "--api-key", "sk-secret", "--metrics-auth")
    gw = next(s for s in doc["services"] if s["name"] == "gateway")
    assert gw["argv"][gw["argv"].index("--http") + 1] == "127.0.0.1:0" and "--metrics-auth" in gw["argv"]
    assert "sk-secret" not in json.dumps(doc) and gw["env"]["C2CQ_API_KEY"] == "***"
    default = next(s for s in config(home)["services"] if s["name"] == "gateway")
    assert default["argv"][default["argv"].index("--http") + 1] == "127.0.0.1:8000"


def test_no_http_and_a_bad_address(home):
    assert "gateway" not in {s["name"] for s in config(home, "--no-http")["services"]}
    p = c2cq(home, "up", "--backend", "sim", "--http", "nowhere", "--print-config", check=False)
    assert p.returncode == 1 and "HOST:PORT" in p.stderr


def test_up_warns_off_loopback_without_a_key(home, monkeypatch, capsys):
    monkeypatch.delenv("C2CQ_API_KEY", raising=False)
    args = argparse.Namespace(http="0.0.0.0:8000", api_key=None, metrics_auth=False, print_config=False)
    gateway_spec(args, ["--home", str(home)])
    err = capsys.readouterr().err
    assert "WARNING" in err and "without an API key" in err
    gateway_spec(argparse.Namespace(**{**vars(args), "api_key": "k"}), ["--home", str(home)])
    gateway_spec(argparse.Namespace(**{**vars(args), "http": "127.0.0.1:9"}), ["--home", str(home)])
    assert capsys.readouterr().err == ""

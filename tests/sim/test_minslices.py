"""`c2cq sim --find-min-slices`: the search (doubling, then bisection) and the command."""

from __future__ import annotations

import json

import pytest

from c2cq import cli
from c2cq.services.sim.minslices import find_min_slices


def step_at(k: int, calls: list[int]):
    def attainment(n: int) -> float:
        calls.append(n)
        return 0.99 if n >= k else 0.5
    return attainment


@pytest.mark.parametrize("start", [1, 5, 13, 64, 200])
def test_the_search_finds_the_threshold_from_any_start_in_few_probes(start):
    calls: list[int] = []
    s = find_min_slices(step_at(13, calls), 0.95, start, cap=300)
    assert s.slices == 13
    assert len(calls) == len(set(calls)) <= 12  # no slice count simulated twice; log-many probes
    assert s.probes[13] == 0.99 and s.probes[12] == 0.5


def test_a_target_not_reached_within_the_cap_is_reported_as_such():
    s = find_min_slices(step_at(40, []), 0.95, 8, cap=30)
    assert s.slices is None and max(s.probes) == 30


def test_the_command_prints_each_policy_beside_one_model_per_slice(tmp_path, capsys):
    out = tmp_path / "min.json"
    rc = cli.main(["sim", "--rate", "3", "--duration", "10", "--models", "12", "--slices", "2", "--seed", "1",
                   "--prompt-tokens", "200", "--output-tokens", "8", "--policies", "c2cq",
                   "--find-min-slices", "--target", "0.9", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    n = doc["policies"]["c2cq"]["slices"]
    assert n is not None and 1 <= n <= doc["one_model_per_slice"]
    assert doc["policies"]["c2cq"]["probes"][str(n)] >= 0.9
    if n > 1:
        assert doc["policies"]["c2cq"]["probes"][str(n - 1)] < 0.9
    text = capsys.readouterr().out
    assert "one model per slice" in text and "c2cq" in text

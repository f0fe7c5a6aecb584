"""A recorded log folds into the same commands and states as when its golden digest was written
(replay.py): the check that a refactoring of the core changed no behaviour."""

from __future__ import annotations

import json

from c2cq.services.scheduler import core
from c2cq.services.scheduler.state import State, decode_state, encode_state

from .replay import GOLDEN, digest, read_log


def test_the_recorded_log_folds_to_the_golden_commands_and_states():
    log = read_log()
    assert digest(log) == json.loads(GOLDEN.read_text())


def test_a_snapshot_plus_the_tail_reaches_the_same_state_as_the_whole_log():
    log = read_log()
    cut = len(log) // 2
    whole = core.fold(State(), log)
    half = core.fold(State(), log[:cut])
    snap = decode_state(encode_state(half))
    resumed = core.fold(core.check_indexes(snap), log[cut:])
    assert encode_state(resumed) == encode_state(whole)

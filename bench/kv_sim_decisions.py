"""Why a KV policy did what it did in `c2cq sim`: the rotation policy's decision reasons counted.

    .venv/bin/python bench/kv_sim_decisions.py OUT.json <c2cq sim arguments, with --kv-policy ...>

Runs `c2cq sim` with `rotation.decide` wrapped to count each decision's ``reason`` per KV policy
(the results are those of the plain command: the wrapper only counts), prints the counts and
writes them to OUT.json. The decision counts in bench/results/kv_rotation_sim.md come from it.
"""

from __future__ import annotations

import collections
import json
import sys

from c2cq import cli
from c2cq.services.sim import kv


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    decide = kv.decide

    def counted(*args, **kwargs):
        d = decide(*args, **kwargs)
        counts[str(d.policy)][d.reason] += 1
        return d

    kv.decide = counted
    try:
        rc = cli.main(argv[1:])
    finally:
        kv.decide = decide
    with open(argv[0], "w") as f:
        json.dump({p: dict(c.most_common()) for p, c in counts.items()}, f, indent=1)
    for p, c in counts.items():
        print(p)
        for reason, n in c.most_common():
            print(f"{n:7d} {reason}")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

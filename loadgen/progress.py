"""The load run's progress line on the terminal."""

from __future__ import annotations

import sys

from c2cq.loadgen.report import RequestRecord, Status
from c2cq.loadgen.workload import PlannedRequest


class ProgressBar:
    """tqdm over completed requests, with sent / in flight / rejected / errors alongside."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="req", desc="loadgen", disable=not enabled, mininterval=0.5,
                        dynamic_ncols=True, file=sys.stderr)
        self.sent = self.in_flight = self.rejected = self.errors = 0

    def on_sent(self, req: PlannedRequest) -> None:
        self.sent += 1
        self.in_flight += 1
        self._postfix()

    def on_done(self, record: RequestRecord) -> None:
        self.in_flight -= 1
        self.rejected += record.status == Status.REJECTED
        self.errors += record.status == Status.ERROR
        self._postfix()
        self.bar.update(1)

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"sent={self.sent} in_flight={self.in_flight} rejected={self.rejected} "
                                 f"errors={self.errors}", refresh=False)

    def close(self) -> None:
        self.bar.close()

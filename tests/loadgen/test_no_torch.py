"""The load generator never imports torch (nor does anything it imports)."""

from __future__ import annotations

import subprocess
import sys


def test_loadgen_does_not_import_torch():
    code = (
        "import sys\n"
        "import c2cq.loadgen.arrivals, c2cq.loadgen.traces, c2cq.loadgen.workload\n"
        "import c2cq.loadgen.report, c2cq.loadgen.plots, c2cq.loadgen.cli, c2cq.loadgen.openai_target\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

"""Planning does not import torch (issue 26): `modexp plan` needs configs and FLOP counts, not the model's
modules; torch's import alone took seconds of `modexp plan`'s start."""

from __future__ import annotations

import subprocess
import sys


def test_planning_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from modexp.config import compose_config\n"
        "from modexp.sweep import build_study\n"
        "import modexp.plan_view, modexp.model, modexp.data\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "from modexp.model import Transformer\n"  # still there when asked for
        "assert 'torch' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]

"""scripts/gpu_check.sh's arguments, checked before it installs or runs anything."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts/gpu_check.sh"


def test_an_unknown_step_is_refused_before_anything_runs() -> None:
    result = subprocess.run(["bash", str(SCRIPT)], env={"GPU_STEPS": "tests bechmark",
                            "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2
    assert "'bechmark', which is not a step" in result.stderr
    assert "tests corpus benchmark time" in result.stderr and result.stdout == ""

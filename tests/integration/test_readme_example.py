"""README's Python example runs as written against the test cluster (20 node names, one sshd)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import sshd as sshd_launcher
from tests.integration._profiles import log_in

pytestmark = pytest.mark.integration

README = Path(__file__).parents[2] / "README.md"


def _python_example() -> str:
    text = README.read_text()
    section = text[text.index("## As a Python library"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_library_example_runs_as_written(openssh, cluster, login_name, tmp_path) -> None:
    node = sshd_launcher.start_node(
        cluster.admin, cluster.name, "node1", tmp_path / "node",
        sshd=sshd_launcher.find_sshd() or "", aliases=[f"node{i}" for i in range(2, 21)],
    )
    try:
        me = log_in(cluster, [login_name])
        script = tmp_path / "example.py"
        script.write_text(_python_example())
        r = subprocess.run([sys.executable, str(script)], env=me.env(), capture_output=True,
                           text=True, timeout=120, check=False)
    finally:
        node.stop()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("0 ") and "load average" in lines[0], lines  # exit status, uptime
    assert lines[1] and lines[2] == "20 of 20 nodes ran true", lines

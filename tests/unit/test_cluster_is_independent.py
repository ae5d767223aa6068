"""The test cluster stands in for Teleport: it imports nothing of the client under test."""

from __future__ import annotations

import ast
from pathlib import Path

CLUSTER = Path(__file__).parents[1] / "cluster"


def test_the_test_cluster_imports_no_tsh_module() -> None:
    found = []
    for path in sorted(CLUSTER.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [f"{path.name}: {n}" for n in names if n == "tsh" or n.startswith("tsh.")]
    assert not found

"""tsh as a new user installs it: the built wheel in a fresh venv, and the zipapp.

The module builds the tsh-py wheel once (from a copy of the checkout, so the
work tree stays clean) and a wheelhouse of its runtime dependencies at this
environment's versions (the only step that may use the package index); the
venvs are then filled from that wheelhouse with ``--no-index``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import distributions, requires
from pathlib import Path

import pytest

from tests.integration._tsh import PASSWORD, env_for
from tsh._version import __version__

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
VERSION_LINE = f"tsh-py v{__version__}\n"


def _run(argv: list[str | Path], **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """Run ``argv`` (text output, captured); assert it succeeded, showing its output if not."""
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, f"{argv}\n{r.stdout}\n{r.stderr}"
    return r


def _requirements(extra: str | None) -> list[str]:
    """tsh-py's requirements: the runtime ones (``extra=None``) or an extra's, markers dropped."""
    found = []
    for req in requires("tsh-py") or []:
        spec, _, marker = req.partition(";")
        if (extra is None and not marker) or (extra and f'extra == "{extra}"' in marker):
            found.append(spec.strip())
    return found


def _name(spec: str) -> str:
    """The normalised distribution name of a requirement (PEP 503)."""
    match = re.match(r"[A-Za-z0-9._-]+", spec)
    assert match, spec
    return re.sub(r"[-_.]+", "-", match[0]).lower()


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the tsh-py wheel and wheels of all its runtime dependencies."""
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    shutil.copytree(REPO / "tsh", src / "tsh", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    constraints = root / "constraints.txt"
    constraints.write_text("".join(
        f"{d.metadata['Name']}=={d.version}\n" for d in distributions()
        if _name(d.metadata["Name"]) != "tsh-py"
    ))  # fmt: skip
    house = root / "wheelhouse"
    # Built with this environment's setuptools and wheel (the test extra), offline.
    _run([*PIP, "wheel", "--no-build-isolation", "-c", constraints, "-w", house, src])
    return house


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dist/tsh.pyz as `python packaging/build_zipapp.py` builds it (here into a tmp dir)."""
    path = tmp_path_factory.mktemp("zipapp") / "tsh.pyz"
    _run([sys.executable, REPO / "packaging" / "build_zipapp.py", "--output", path])
    return path


def make_venv(path: Path, wheelhouse: Path, *requirements: str | Path) -> Path:
    """A new venv at ``path`` with ``requirements`` installed from ``wheelhouse`` only;
    returns its bin directory."""
    _run([sys.executable, "-m", "venv", "--without-pip", path])
    python = path / "bin" / "python"
    if requirements:
        _run([*PIP, "--python", python, "install", "--no-index", "--find-links", wheelhouse,
              "--no-compile", *requirements])  # fmt: skip
    return path / "bin"


def installed_distributions(bin_dir: Path) -> set[str]:
    """The normalised names of the distributions installed in the venv of ``bin_dir``."""
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))")  # fmt: skip
    # -I: not the current directory (a checkout has a tsh_py.egg-info).
    return {_name(n) for n in json.loads(_run([bin_dir / "python", "-I", "-c", code]).stdout)}


def _login(argv: list[str | Path], cluster, user: str, env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    r = subprocess.run(
        [*map(str, argv), "login", f"--proxy={cluster.web_addr}", f"--user={user}"],
        input=f"{PASSWORD}\n", capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"> Profile URL:        https://{cluster.web_addr}\n" in r.stdout


def test_wheel_in_fresh_venv_works_without_test_dependencies(
    wheelhouse: Path, cluster, login_name: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    (wheel,) = wheelhouse.glob("tsh_py-*.whl")
    bin_dir = make_venv(tmp_path / "venv", wheelhouse, wheel)
    installed = installed_distributions(bin_dir)
    assert "tsh-py" in installed
    test_only = {_name(spec) for spec in _requirements("test")}
    assert {"pytest", "hypothesis", "aiohttp"} <= test_only
    assert not installed & test_only, installed & test_only
    assert {_name(spec) for spec in _requirements(None)} <= installed

    tsh = bin_dir / "tsh"
    assert _run([tsh, "version"]).stdout == VERSION_LINE
    cluster.add_user("wheeluser", [login_name])
    env = env_for(cluster)
    _login([tsh], cluster, "wheeluser", env)
    config = _run([tsh, "config"], env=env).stdout
    # OpenSSH starts the installed entry point itself for every connection.
    assert f"ProxyCommand '{tsh}' proxy ssh --cluster='{cluster.name}' " in config


def test_zipapp_runs_with_only_the_runtime_dependencies(
    wheelhouse: Path, pyz: Path, cluster, login_name: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    assert os.access(pyz, os.X_OK)
    python = make_venv(tmp_path / "deps", wheelhouse, *_requirements(None)) / "python"
    assert "tsh-py" not in installed_distributions(python.parent)

    assert _run([python, pyz, "version"]).stdout == VERSION_LINE
    env = env_for(cluster)
    r = subprocess.run([python, pyz, "status"], capture_output=True, text=True, env=env)
    assert (r.returncode, r.stderr) == (1, "Not logged in.\n")
    cluster.add_user("pyzuser", [login_name])
    _login([python, pyz], cluster, "pyzuser", env)
    status = _run([python, pyz, "status"], env=env).stdout
    assert "  Logged in as:       pyzuser\n" in status, status
    # Through this Python, not the archive's #! line's, which may lack the dependencies.
    config = _run([python, pyz, "config"], env=env).stdout
    assert f"ProxyCommand '{python}' '{pyz}' proxy ssh --cluster='{cluster.name}' " in config


def test_zipapp_names_missing_dependencies(pyz: Path, tmp_path: Path) -> None:
    bare = make_venv(tmp_path / "bare", tmp_path) / "python"
    r = subprocess.run([bare, pyz, "version"], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith(
        "error: tsh.pyz needs tsh's runtime dependencies in this Python: pip install 'typer"
    ), r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr

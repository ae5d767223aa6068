"""Build ``dist/tsh.pyz``: tsh as one executable file (a stdlib zipapp).

    python packaging/build_zipapp.py [--output dist/tsh.pyz] [--python "/usr/bin/env python3"]

The archive holds the ``tsh`` package only. Its runtime dependencies (typer,
asyncssh, httpx, keyring, platformdirs, cryptography) come from the Python that
runs it: cryptography and cffi are native code, which Python cannot import
from a zip file, so bundling the pure-Python rest would save no install step.

zipimport never writes ``.pyc`` files, so an archive of sources would be
compiled on every run (far over the start-up budget). Each module therefore
sits beside its ``.pyc`` (the layout zipimport reads), compiled by this Python
as unchecked-hash: the archive never changes. Other Python versions ignore
those and compile the sources.
"""

from __future__ import annotations

import argparse
import py_compile
import re
import shlex
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

import tomllib  # this script needs Python 3.11+; the archive runs on what tsh supports

REPO = Path(__file__).resolve().parents[1]

# zipapp's own generated __main__ drops main()'s return value: the exit code. A Python
# without the dependencies gets one line naming them, not an import error from deep in
# a command (runpy, which runs the archive, has already imported importlib.util).
MAIN = """\
import sys
from importlib.util import find_spec

REQUIREMENTS = {requirements!r}
def _found(name):
    try:
        return find_spec(name) is not None
    except ModuleNotFoundError:  # "google.protobuf" without "google"
        return False


missing = [spec for name, spec in REQUIREMENTS.items() if not _found(name)]
if missing:
    sys.exit("error: tsh.pyz needs tsh's runtime dependencies in this Python: "
             "pip install " + " ".join(missing))

from tsh.cli import main

sys.exit(main())
"""


def runtime_requirements() -> dict[str, str]:
    """pyproject.toml's dependencies (shell-quoted), by the module each one installs."""
    specs = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    # Each one's import name is its distribution name, or listed here (else the zipapp test fails).
    names = {"protobuf": "google.protobuf"}
    out = {}
    for spec in specs:
        dist = re.match(r"[A-Za-z0-9_.-]+", spec)[0].lower().replace("-", "_")
        out[names.get(dist, dist)] = shlex.quote(spec)
    return out


def build(output: Path, interpreter: str = "/usr/bin/env python3") -> Path:
    """Write the zipapp to ``output`` (an executable file); return its path."""
    with tempfile.TemporaryDirectory(prefix="tsh-zipapp-") as tmp:
        stage = Path(tmp)
        shutil.copytree(REPO / "tsh", stage / "tsh", ignore=shutil.ignore_patterns("__pycache__"))
        (stage / "__main__.py").write_text(MAIN.format(requirements=runtime_requirements()))
        for source in stage.rglob("*.py"):
            py_compile.compile(
                str(source), cfile=str(source.with_suffix(".pyc")),
                dfile=str(source.relative_to(stage)), doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )  # fmt: skip
        output.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(stage, output, interpreter=interpreter, compressed=True)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "dist" / "tsh.pyz")
    parser.add_argument("--python", default="/usr/bin/env python3", help="the archive's #! line")
    args = parser.parse_args()
    path = build(args.output, args.python)
    print(f"{path} (for Python {sys.version_info.major}.{sys.version_info.minor}; "
          "needs tsh's runtime dependencies installed)")  # fmt: skip


if __name__ == "__main__":
    main()

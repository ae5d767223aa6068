"""Shell completion: `tsh --completion-script-bash|zsh|fish` and the answers at each TAB.

bash runs for real: the script is loaded into it and its completion function
called as bash calls it on TAB. zsh and fish are not installed here; their
tests ask tsh what those shells' scripts ask it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_tool

pytestmark = pytest.mark.integration

TSH = Path(sys.executable).with_name("tsh")  # the entry point, found on PATH by the scripts

# As bash does on TAB: COMP_WORDS/COMP_CWORD set, then the function that `complete -F`
# registered for tsh, called with the command's name; then print what it offers.
_BASH_TAB = r"""
eval "$1"; shift
[[ $(complete -p tsh) =~ -F\ ([^ ]+) ]] || { echo "no completion for tsh" >&2; exit 1; }
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
"${BASH_REMATCH[1]}" tsh
printf '%s\n' "${COMPREPLY[@]}"
"""


def _script(shell: str) -> str:
    r = subprocess.run([TSH, f"--completion-script-{shell}"], capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    return r.stdout


def _env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{TSH.parent}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize(
    ("words", "offered"),
    [(["tsh", "lo"], ["login", "logout"]),
     (["tsh", "st"], ["status"]),
     (["tsh", "proxy", ""], ["ssh"]),
     (["tsh", "login", "--pr"], ["--proxy"])],
)  # fmt: skip
def test_bash_tab_offers_commands_and_options(words: list[str], offered: list[str]) -> None:
    bash = require_tool("bash")
    r = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", _BASH_TAB, "bash", _script("bash"), *words],
        capture_output=True, text=True, env=_env(), timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == offered


def test_zsh_script_and_answer() -> None:
    assert _script("zsh").startswith("#compdef tsh\n")
    r = subprocess.run(
        [TSH], capture_output=True, text=True, timeout=60,
        env=dict(_env(), _TSH_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS="tsh lo"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert '"login":' in r.stdout and '"logout":' in r.stdout and '"status"' not in r.stdout


def test_fish_script_and_answer() -> None:
    assert _script("fish").startswith("complete --command tsh ")
    r = subprocess.run(
        [TSH], capture_output=True, text=True, timeout=60,
        env=dict(_env(), _TSH_COMPLETE="complete_fish", _TYPER_COMPLETE_FISH_ACTION="get-args",
                 _TYPER_COMPLETE_ARGS="tsh lo"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [line.split("\t")[0] for line in r.stdout.splitlines()] == ["login", "logout"]

"""Shell completion: ``tsh --completion-script-bash|zsh|fish`` prints the script.

Real tsh (kingpin) has ``--completion-script-bash`` and ``--completion-script-zsh``;
fish is ours. The scripts are typer's: at each TAB the shell runs ``tsh`` with
``_TSH_COMPLETE`` set, and typer answers from the command definitions, so the
completions are always the commands and options tsh has.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import typer

__all__ = ["SCRIPT_OPTIONS", "prepare"]

_COMPLETE_VAR = "_TSH_COMPLETE"


def _print_script(shell: str) -> Callable[[bool], None]:
    def callback(value: bool) -> None:
        if not value:
            return
        from typer.completion import get_completion_script  # type: ignore[attr-defined]

        print(get_completion_script(prog_name="tsh", complete_var=_COMPLETE_VAR, shell=shell))
        raise typer.Exit(0)

    return callback


SCRIPT_OPTIONS = {
    shell: typer.Option(
        False,
        f"--completion-script-{shell}",
        help=f"Print the {shell} completion script.",
        is_eager=True,
        expose_value=False,
        callback=_print_script(shell),
    )
    for shell in ("bash", "zsh", "fish")
}


def prepare() -> None:
    """Before typer runs: when a shell asks for completions, register typer's
    answer formats (the scripts above expect them, not click's)."""
    if os.environ.get(_COMPLETE_VAR):
        from typer.completion import completion_init  # type: ignore[attr-defined]

        completion_init()

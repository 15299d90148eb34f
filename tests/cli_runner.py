"""The command run in this process (the shared Ray instance, no interpreter start), its lines captured."""

from __future__ import annotations

import pytest

from anyv2v_batch.cli import main


def run_cli(argv) -> tuple[int, list[str]]:
    """(exit code, the lines the command said)."""
    said: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("anyv2v_batch.cli._say", lambda quiet, m: said.append(m))
        mp.setattr("typer.echo", lambda m, err=False: said.append(m))
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in argv])
            raise SystemExit(0)
    return e.value.code, said

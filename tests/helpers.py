"""Constants and assertions shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from click.testing import Result

from callm.ae.model import AEConfig

TINY = AEConfig(height=32, width=32, widths=(4, 8))
# Frames 24-43 of an intruder video hold the block racing against the walkers.
INTRUDER = (24, 44)


def assert_user_error(result: Result, *fragments: str) -> str:
    """A CLI failure as the user should see it: exit 1, one ``callm: error:`` line on stderr, no traceback."""
    assert result.exit_code == 1, result.output
    # CliRunner reports an uncaught exception with exit code 1 too; a handled error leaves via SystemExit.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # not even a blank line left behind by a progress bar
    assert lines[0].startswith("callm: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]

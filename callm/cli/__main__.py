"""``python -m callm.cli``: the same as the ``callm`` command."""

from callm.cli import app

app(prog_name="callm")

"""The ``callm`` command: parses options, calls the pipeline, prints. No logic of its own.

Each module registers its commands on the shared ``app``; importing them here assembles the CLI.
"""

from callm.cli import adapt, chat, stage1, vador, watch, weights  # noqa: F401  (registers the commands)
from callm.cli.common import app

__all__ = ["app"]

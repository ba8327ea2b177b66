"""Entry point: ``quantdesk`` / ``python -m app``. No arguments opens the app; else the CLI."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Open the GUI when called without arguments, else run a CLI command."""
    multiprocessing.freeze_support()  # engine children in a frozen (PyInstaller) build
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        from app.ui.main import run

        return run()
    from app import cli

    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())

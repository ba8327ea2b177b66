"""Entry point: ``quantdesk`` / ``python -m app``. No arguments opens the app; ``--self-test``
checks an installation (app/selftest.py); anything else is a CLI command."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Open the GUI when called without arguments, else run a CLI command."""
    multiprocessing.freeze_support()  # engine children in a frozen (PyInstaller) build
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        from app.ui.main import run

        return run()
    if args == ["--self-test"]:
        from app import selftest

        return selftest.run()
    from app import cli

    try:
        return cli.main(args)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())

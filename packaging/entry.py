"""The frozen app's entry point (PyInstaller runs this file as __main__)."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # the engine's spawned children re-enter here
    from app.__main__ import main

    sys.exit(main())

"""The PySide6 user interface. Thin: widgets show and ask, the layers below decide and do."""

"""Qt-free flows that the CLI and the UI both drive (DESIGN.md: between engine/hub and jobs)."""

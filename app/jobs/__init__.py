"""Qt-side bridges: run engine and hub work off the UI thread and turn results into signals."""

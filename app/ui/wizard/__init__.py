"""The quantize-and-compare wizard: Source → Plan → Run → Results, on app.pipeline.wizard."""

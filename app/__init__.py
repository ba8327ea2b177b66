"""QuantDesk: run, quantize and compare quantized LLMs locally, on llama.cpp."""

__version__ = "0.1.0"

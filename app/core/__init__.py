"""Pure domain: no Qt, no llama.cpp. Everything here runs the same in the GUI, the CLI and tests."""

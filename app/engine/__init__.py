"""Everything that runs llama.cpp. Heavy work happens in child processes; no Qt here."""

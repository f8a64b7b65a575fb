# Two entry points that set everything up on a fresh machine: `make demo` and `make test`.
# The environment (.venv) is created on first use: torch (the CPU wheel pinned below on
# machines without an NVIDIA driver), the dev tools, and this package with its C++ extension.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0
TORCH_GPU ?= torch>=2.4

.PHONY: demo test test-triton36 bench bench-slow report gpu-check clean

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

# The Triton kernels against the GPU machine's Triton (3.6): their sm_80/sm_90 compile checks and their interpreter
# parity, in a second environment beside the first (which builds the C++ extension both import)
VENV36 := .venv-triton36
$(VENV36)/.ready: requirements-triton36.txt
	test -x $(VENV36)/bin/python || $(PYTHON) -m venv $(VENV36)
	$(VENV36)/bin/python -m pip install -q "$(TORCH_CPU)" -r requirements-triton36.txt
	touch $@

# sm_90 only there (the GPU machine's architecture): its compile checks are the slow part
test-triton36: $(VENV)/.ready $(VENV36)/.ready
	PYTHONPATH=$(CURDIR) VAEKERNELS_REPORT_ARCHS=90 $(VENV36)/bin/python -m pytest -q -p no:cacheprovider -k triton \
		tests/backends/test_triton_aot.py tests/backends/test_triton_internals.py tests/ops

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

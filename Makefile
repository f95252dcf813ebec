# The README's two commands: `make reproduce` (the quick tier of every notebook -> reports/) and
# `make test` (unit tests + nbval over every notebook). Each sets itself up: a .venv is created
# and the package installed when missing or when pyproject.toml changed. `make reproduce RESUME=1`
# continues an interrupted run (notebooks with results.json at the tier are kept).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data
TIER ?= quick
export FEDREPRO_DATA ?= $(HOME)/.cache/fedrepro/data

.PHONY: install data test reproduce benchmarks wheelhouse clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

# Offline copies of CIFAR-10 and MNIST (class-folder archives) are extracted into FEDREPRO_DATA when
# a shared/data folder sits beside the repository; elsewhere the datasets download on first use.
data:
	@if [[ -f $(SHARED_DATA)/SHA256SUMS ]]; then \
	  (cd $(SHARED_DATA) && sha256sum --check --quiet SHA256SUMS) || exit 1; \
	  for pair in cifar10:cifar10-jpg.tar.gz mnist:mnist-png.tar.gz; do \
	    name=$${pair%%:*}; archive=$(SHARED_DATA)/$${pair#*:}; \
	    stamp="$(FEDREPRO_DATA)/$$name/.extracted-$$(sha256sum $$archive | cut -c1-16)"; \
	    if [[ ! -e $$stamp ]]; then \
	      echo "extracting $$archive into $(FEDREPRO_DATA)/$$name"; \
	      rm -rf "$(FEDREPRO_DATA)/$$name" && mkdir -p "$(FEDREPRO_DATA)/$$name"; \
	      tar xzf $$archive -C "$(FEDREPRO_DATA)/$$name" && touch "$$stamp"; \
	    fi; \
	  done; \
	else echo "no offline data at $(SHARED_DATA): datasets download into $(FEDREPRO_DATA) on first use"; fi

test: install data
	TQDM_DISABLE=1 $(BIN)/python -m pytest --nbval-lax tests notebooks

reproduce: install data
	$(BIN)/fedrepro reproduce --tier $(TIER) $(if $(RESUME),--resume)

benchmarks: install data
	$(BIN)/python -m pip install --quiet -e ".[dev,flower]"  # flower_speed.py needs Flower's simulation engine (Ray)
	for script in benchmarks/*.py; do $(BIN)/python $$script || exit 1; done

# Wheels of every runtime dependency except the torch family, for an offline machine that already has a
# CUDA build of torch (README: "On a GPU machine without internet"). WHEEL_HAVE: a pip freeze of the target.
WHEELHOUSE ?= wheelhouse
WHEEL_PYTHON ?= 3.12
wheelhouse: install
	$(BIN)/python -m fedrepro.wheelhouse $(WHEELHOUSE) --python-version $(WHEEL_PYTHON) $(if $(WHEEL_HAVE),--have $(WHEEL_HAVE))

clean:
	rm -rf $(VENV) reports

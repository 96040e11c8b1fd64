# Two commands on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench bench-full bench-her clean

# pip (not uv/poetry): only pip sees the CPU torch wheel that lies on disk.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[dev,ray]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) scripts/ch02_ppo_dense_reach.py all --seed 0

test: $(STAMP) lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src scripts tests bench
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) bench/bench_speed.py --quick

bench-full: $(STAMP)
	$(PY) bench/bench_speed.py --breakdown

# Chapter 4: plain SB3 SAC + HerReplayBuffer vs the fast path, on FetchReach-v4 and FetchPush-v4.
bench-her: $(STAMP)
	$(PY) bench/bench_her.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

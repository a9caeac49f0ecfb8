# The two commands of the README: `make demo` and `make test`.
# Both create .venv when it is missing and install what they need into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo native test lint format clean compose-secrets bench bench-queries bench-raft bench-cluster bench-s3 crash sim cluster dashboard

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[cluster,chaos,s3,test,dev]'
	touch $(STAMP)

# The compiled hot path (protobase/native.py, docs/native.md): the editable install
# builds it with mypyc; it is rebuilt here when one of its sources changed (an import
# refuses extensions older than their sources). PROTOBASE_PURE_PYTHON=1 skips it.
NATIVE_SOURCES := $(shell $(PYTHON) protobase/native.py)
NATIVE := protobase/_native_manifest.json

$(NATIVE): $(NATIVE_SOURCES) protobase/native.py setup.py | $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace

native: $(NATIVE)

demo: $(STAMP) $(NATIVE)
	$(BIN)/protobase demo

# The suite runs on the compiled hot path, then the tests marked pure_pass (tests/conftest.py)
# run again on the pure-Python fallback.
# The chaos report test renders report.html in Debian's chromium; the ops tests run
# promtool from Debian's prometheus package (both installed when missing).
test: $(STAMP) $(NATIVE)
	command -v chromium >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }
	command -v promtool >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus; }
	command -v docker-compose >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y docker-compose \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y docker-compose; }
	$(BIN)/python -m pytest -q
	PROTOBASE_PURE_PYTHON=1 $(BIN)/python -m pytest -q -m pure_pass -p no:cacheprovider

# The secrets docker-compose.yml reads (random, written once, git-ignored).
compose-secrets: | $(BIN)/python
	$(BIN)/python ops/compose/make_secrets.py ops/compose/secrets

# ops/grafana/protobase.json from ops/grafana/dashboard.py (a test fails when they differ).
dashboard: $(STAMP)
	$(BIN)/python ops/grafana/dashboard.py

# A local 3-node cluster in cluster-data/ (configs, secret, token, data); Ctrl-C stops it.
cluster: $(STAMP)
	$(BIN)/protobase cluster up cluster-data --nodes 3

lint: $(STAMP)
	$(BIN)/ruff check protobase cluster chaos seglog tests bench ops setup.py
	$(BIN)/ruff format --check protobase cluster chaos seglog tests bench ops setup.py
	$(BIN)/mypy
	$(BIN)/mypy ops/grafana/dashboard.py

format: $(STAMP)
	$(BIN)/ruff format protobase cluster chaos seglog tests bench ops setup.py
	$(BIN)/ruff check --fix protobase cluster chaos seglog tests bench ops setup.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache $(NATIVE)
	find protobase -name '*.so' -delete

bench: | $(BIN)/python
	$(BIN)/pip install -e '.[bench]'
	$(BIN)/python bench/embedded.py
	$(BIN)/python bench/queries.py

# Instructions per operation, compiled vs pure Python, under valgrind (Debian's valgrind).
.PHONY: bench-hot-path
bench-hot-path: $(STAMP) $(NATIVE)
	command -v valgrind >/dev/null 2>&1 || apt-get install -y valgrind || \
		{ apt-get update && apt-get install -y valgrind; }
	$(BIN)/python bench/hot_path.py

bench-queries: | $(BIN)/python
	$(BIN)/python bench/queries.py

# ProtoBase's replicated key-value example vs a 3-member etcd cluster (Debian's etcd-server).
bench-raft: $(STAMP)
	command -v etcd >/dev/null 2>&1 || apt-get install -y etcd-server || \
		{ apt-get update && apt-get install -y etcd-server; }
	$(BIN)/python bench/raft.py

# A 3-node ProtoBase cluster vs the same 3-member etcd and StandaloneFileStorage.
bench-cluster: $(STAMP)
	command -v etcd >/dev/null 2>&1 || apt-get install -y etcd-server || \
		{ apt-get update && apt-get install -y etcd-server; }
	$(BIN)/python bench/cluster.py

# Adding and removing a 4th member of a loaded 3-node ProtoBase cluster vs the same on etcd
# (1 GiB of data; ARGS=--quick for 64 MiB, ARGS="--gib 4" for another size).
.PHONY: bench-membership
bench-membership: $(STAMP)
	command -v etcd >/dev/null 2>&1 || apt-get install -y etcd-server || \
		{ apt-get update && apt-get install -y etcd-server; }
	$(BIN)/python bench/membership.py $(ARGS)

# CloudFileStorage, backup and restore against their own moto_server (extra test: moto[server]).
bench-s3: $(STAMP)
	$(BIN)/python bench/s3.py

# More SIGKILL crash runs than `make test` does: make crash N=500
N ?= 500
crash: $(STAMP)
	PROTOBASE_CRASH_RUNS=$(N) $(BIN)/python -m pytest -q tests/file_storage/test_crash.py

# More seeds of the Raft simulation than `make test` runs (200): make sim SEEDS=5000
# (FIRST=N starts elsewhere; FAULT=name runs the mutation check by hand).
SEEDS ?= 5000
FIRST ?= 0
sim: $(STAMP)
	$(BIN)/python tests/raft/raft_simulation.py --seeds $(SEEDS) --first $(FIRST) $(if $(FAULT),--fault $(FAULT))

# A chaos campaign: every workload under every fault mix, MINUTES in all (at least 10).
MINUTES ?= 10
chaos: $(STAMP)
	$(BIN)/protobase chaos campaign --minutes $(MINUTES) --out chaos-runs/campaign

# char-rnn-bench: `make bench` and `make test` set everything up first.
# Two environments, because Chainer and MXNet need NumPy 1.x (docs/DEVELOPING.md).
PYTHON ?= python3
VENV := .venv
LEGACY := .venv-legacy

.PHONY: setup browser demo lint test test-modern test-legacy bench bench-full reference-full \
	reference-results clean bench-sweep reference-sweep bench-sweep-bf16 reference-sweep-bf16 \
	bench-bf16-long reference-bf16-long \
	bench-cells reference-cells bench-scaling reference-scaling

# The two environments install side by side (-j2): on a fresh machine that is most of
# `make test`'s time.
setup:
	$(MAKE) --no-print-directory -j2 $(VENV)/.installed $(LEGACY)/.installed

# A stamp per environment: reinstalled only when its requirements change.
# The package itself goes in editable (no dependencies: the pins above are its
# environment), so the `charrnn` command is .venv/bin/charrnn.
$(VENV)/.installed: requirements/modern.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/modern.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# chainer is an sdist whose setup.py imports pkg_resources: build tools and
# numpy 1.23.5 go in first, then chainer builds without isolation.
$(LEGACY)/.installed: requirements/legacy.txt requirements/legacy-build.txt
	test -x $(LEGACY)/bin/python || $(PYTHON) -m venv $(LEGACY)
	$(LEGACY)/bin/pip install --quiet --disable-pip-version-check -r requirements/legacy-build.txt numpy==1.23.5
	$(LEGACY)/bin/pip install --quiet --disable-pip-version-check --no-build-isolation -r requirements/legacy.txt
	touch $@

# Headless Chromium and its WebDriver for tests/test_web.py: Debian's packages, installed
# where they are missing and apt-get can (root); elsewhere a line says what to install,
# and the browser tests skip (under CI they fail instead).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null; \
	else echo "make browser: install chromium and chromedriver for tests/test_web.py"; fi

# The model in a web page (docs/WEB.md) at http://127.0.0.1:$(PORT)/: standard library only.
PORT ?= 8000
demo:
	$(PYTHON) -m charrnn serve --port $(PORT)

lint: setup
	$(VENV)/bin/ruff check .

# Lint first: a style error fails in seconds, before the 10-minute suite.
test: setup browser lint test-modern test-legacy

# Two workers: the tests are tiny models, mostly single-threaded Python, so two at a time
# use both cores (measured on a slow day: 24.8 -> 18.3 minutes). Each framework's conformance
# cases stay on one worker (xdist_group), which compiles its graphs once.
test-modern:
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup

# The same for the legacy suite: 4:19 -> 2:30 minutes on a slow day.
test-legacy:
	$(LEGACY)/bin/python -m pytest -n 2 --dist loadgroup

# A run of your own: records, report and plots go to benchmarks/results/<profile>/ (ignored
# by git), and the table is printed. No tracked file changes.
bench: setup
	$(VENV)/bin/python -m benchmarks.run_all --profile quick

bench-full: setup
	$(VENV)/bin/python -m benchmarks.run_all --profile full

# The committed full run: 32 epochs of every default row, published to
# benchmarks/reference/<machine>/full/ with its report and plots, the original suite's
# numbers beside it, and docs/RESULTS.md rewritten. About 5 hours
# on this 2-core CPU; after a stop, `python -m benchmarks.run_all --profile full --resume
# --no-report` continues it, then run the second line.
reference-full: setup
	$(VENV)/bin/python -m benchmarks.run_all --profile full --no-report
	$(VENV)/bin/python -m benchmarks.report benchmarks/results/full --reference --compare-original

# The committed quick reference: three repeats taking turns (the report gives medians and
# min-max; with the bf16 rows and onnxruntime about 40 minutes on the 2-core CPU), published to benchmarks/reference/<machine>/quick/ (<machine>: CPU model, best
# vector or matrix extension and core count, e.g. amd-epyc-avx512bf16-2core) with its
# report and plots, and docs/RESULTS.md rewritten. The README's headline table is this
# table's few columns for the newest kind (tests/test_readme.py says when it is stale).
reference-results: setup
	$(VENV)/bin/python -m benchmarks.run_all --profile quick --repeats 3 --no-report
	$(VENV)/bin/python -m benchmarks.report benchmarks/results/quick --reference

# How each framework's cost grows with the model and the batch (benchmarks.sweep): ms/step,
# MFU, memory and generation speed over --rnn-size 64-512 and --batch-size 1-256, each
# point a fresh 24-step run (28 minutes for all 77 points on this 2-core CPU). Fewer points:
# python -m benchmarks.run_all --profile sweep --rnn-sizes 64,128 --batch-sizes 1,16
bench-sweep: setup
	$(VENV)/bin/python -m benchmarks.run_all --profile sweep

# The committed sweep, like the quick reference: published to
# benchmarks/reference/<machine>/sweep/ with its report and plots, docs/RESULTS.md rewritten.
reference-sweep: setup
	$(VENV)/bin/python -m benchmarks.run_all --profile sweep --no-report
	$(VENV)/bin/python -m benchmarks.report benchmarks/results/sweep --reference

# bf16-mixed against fp32 where the products are large (what bf16 matrix units can do):
# the fp32 and the bf16 row of every framework with a bf16 path, 24 steps at --rnn-size
# 128, 512 and 1024 (batch 64), no generation; about 35 minutes on the 2-core CPU.
bench-sweep-bf16: setup
	$(VENV)/bin/python -m benchmarks.run_all --profile sweep-bf16

# The committed bf16 sweep: benchmarks/reference/<machine>/sweep-bf16/, docs/RESULTS.md
# rewritten.
reference-sweep-bf16: setup
	$(VENV)/bin/python -m benchmarks.run_all --profile sweep-bf16 --no-report
	$(VENV)/bin/python -m benchmarks.report benchmarks/results/sweep-bf16 --reference

# The bf16 rows' loss after real training: four epochs of the fp32 and the bf16 row of
# every framework with a bf16 path, validation, no generation (about 35 minutes).
bench-bf16-long: setup
	$(VENV)/bin/python -m benchmarks.run_all --profile bf16-long

# The committed long run: benchmarks/reference/<machine>/bf16-long/, docs/RESULTS.md
# rewritten.
reference-bf16-long: setup
	$(VENV)/bin/python -m benchmarks.run_all --profile bf16-long --no-report
	$(VENV)/bin/python -m benchmarks.report benchmarks/results/bf16-long --reference

# What each cell costs (docs/SPEC.md section 8): one epoch of the LSTM, the GRU and the
# vanilla RNN in every framework, each cell from its own initial weights (about three
# quick runs' time).
bench-cells: setup
	$(VENV)/bin/python -m benchmarks.run_all --profile cells

# The committed cells table, like the quick reference: published to
# benchmarks/reference/<machine>/cells/, docs/RESULTS.md rewritten.
reference-cells: setup
	$(VENV)/bin/python -m benchmarks.run_all --profile cells --no-report
	$(VENV)/bin/python -m benchmarks.report benchmarks/results/cells --reference

# Data-parallel throughput (docs/SPEC.md section 11): every framework with a data-parallel
# path trains 24 steps of the default spec as 1 and as 2 processes of one thread each
# (python -m charrnn.common.launch --nproc W); the report gives the speedup and the efficiency.
bench-scaling: setup
	$(VENV)/bin/python -m benchmarks.run_all --profile scaling

# The committed scaling table, like the quick reference: three repeats taking turns,
# published to benchmarks/reference/<machine>/scaling/, docs/RESULTS.md rewritten.
reference-scaling: setup
	$(VENV)/bin/python -m benchmarks.run_all --profile scaling --repeats 3 --no-report
	$(VENV)/bin/python -m benchmarks.report benchmarks/results/scaling --reference

clean:
	rm -rf $(VENV) $(LEGACY) .pytest_cache checkpoints

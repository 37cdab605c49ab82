# Two commands on a fresh machine: `make run` and `make test` (each creates .venv when missing).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
ARGS ?=

.PHONY: run test lint bench gpu-check publish venv clean

# The example plug-in of the tests lives outside the venv, on the tests' PYTHONPATH only, so the default
# sweep (`make run`, method=all) ranks registered methods only.
TEST_PLUGINS := $(abspath $(VENV))/test-plugins
TEST_ENV := PYTHONPATH=$(TEST_PLUGINS)

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	# torch/torchvision install from this machine's disk; pinned here so pip never picks another build
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e '.[test]'
	touch $@

$(TEST_PLUGINS)/.installed: $(VENV)/.installed $(wildcard tests/plugin_example/pyproject.toml tests/plugin_example/*/*.py)
	rm -rf $(TEST_PLUGINS)
	$(PIP) --no-deps --no-build-isolation --target $(TEST_PLUGINS) ./tests/plugin_example
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/mlfsic run $(ARGS)

test: venv $(TEST_PLUGINS)/.installed
	$(TEST_ENV) $(PY) -m pytest $(ARGS)

# ruff, configured in pyproject.toml ([tool.ruff]); .ci/run runs it before the tests
lint: venv
	$(VENV)/bin/ruff check .

# The published reference run (results/published/, committed): from the default sweep's run dir, or RUN=DIR.
# Regenerate it in the same commit as any change that moves a default number.
RUN ?=
publish: venv
	$(VENV)/bin/mlfsic leaderboard $(RUN) publish=true

bench: venv $(TEST_PLUGINS)/.installed
	$(TEST_ENV) $(PY) -m pytest -m slow -s $(ARGS)

# The GPU figures of issue 25 (tests/gpu_check.py): on a CUDA machine, ResNet-50 extraction through the store vs a
# bare forward pass, lcm/laso/mkt sweeps with and without the GPU, two sweeps packed at resources.num_gpus=0.5.
# Without CUDA: one skip line, exit 0. Never part of `make test` or CI.
gpu-check: venv $(TEST_PLUGINS)/.installed
	$(TEST_ENV) $(PY) tests/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) results/runs results/cache results/episodes results/data

# Two commands on a fresh machine: `make run` and `make test` (each creates .venv when missing).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
ARGS ?=

.PHONY: run test bench venv clean

$(VENV)/.installed: pyproject.toml tests/plugin_example/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch/torchvision install from this machine's disk; pinned here so pip never picks another build
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e '.[test]' -e tests/plugin_example
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/mlfsic run $(ARGS)

test: venv
	$(PY) -m pytest $(ARGS)

bench: venv
	$(PY) -m pytest -m slow -s $(ARGS)

clean:
	rm -rf $(VENV) results/runs results/cache results/episodes results/data

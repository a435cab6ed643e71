# Two commands do all set-up on a fresh machine: `make search` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The known-good pair on the reference machine; setup.py itself declares ranges.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: venv search test lint graphviz clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# graphviz's `dot` renders the cell drawings; install it where it is missing (needs root).
graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) || echo "warning: could not install graphviz; drawings fall back to .dot sources"; \
	  else echo "warning: graphviz 'dot' missing; run: sudo apt-get install graphviz"; fi; }

search: venv graphviz
	$(PY) search.py -c experiments/quick_digits.yaml

test: venv graphviz
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf runs .pytest_cache

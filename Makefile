# make demo  - set up .venv on first use, then run the multimodal demo (docs/demo.md; DEMO_ARGS=--tiny: < 1 min)
# make test  - set up .venv on first use, then run the test suite (CPU, < 10 min)
# make test-slow - also the slow tests that read ../shared/data
# make mutate - mutation testing (docs/mutation.md); writes and prints MUTATE_OUT (runs/mutation/results.json)
PY := .venv/bin/python
OUT ?= runs/demo
DEMO_ARGS ?=
MUTATE_OUT ?= runs/mutation/results.json

.PHONY: setup demo test test-slow mutate clean
setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) -m unitok.cli demo --out $(OUT) $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m "slow or not slow"

mutate: setup
	$(PY) scripts/mutate.py $(MODULES) --out $(MUTATE_OUT)

clean:
	rm -rf .venv runs .pytest_cache

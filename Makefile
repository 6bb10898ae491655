# The README's two commands: `make demo` (set up + run the main job) and `make test` (set up + run the tests).
PY := .venv/bin/python

.PHONY: setup demo test bench clean

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	bash scripts/test.sh

bench: setup
	$(PY) bench/forward.py

clean:
	rm -rf runs bench_out .pytest_cache

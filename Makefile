.PHONY: install run test lint bench schema

install:
	scripts/install

run: install
	.venv/bin/astralis validate
	.venv/bin/astralis simulate --org acme --events tests/cases/acme/corpus.jsonl --state tests/cases/acme/state.json

test: install
	scripts/test

lint:
	.venv/bin/ruff check .
	.venv/bin/mypy

schema:
	.venv/bin/astralis schema

bench:  # every benchmark runs; the target fails if any missed its targets
	@status=0; \
	.venv/bin/python -m bench.rules || status=1; \
	.venv/bin/python -m bench.model || status=1; \
	.venv/bin/python -m bench.http || status=1; \
	.venv/bin/python -m bench.simulate || status=1; \
	.venv/bin/python -m bench.scale || status=1; \
	exit $$status

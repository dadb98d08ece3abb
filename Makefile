PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/herald dev

test: $(STAMP)  ## the whole suite; starts its own Redis, brokers (embedded and real Kafka) and SMTP servers
	tests/services/install
	$(BIN)/python -m pytest -q

docs: $(STAMP)  ## regenerate docs/asyncapi.json from config/herald.yaml
	env -u HERALD_CONFIG $$(env | sed -n 's/^\(HERALD_[A-Z_]*\)=.*/-u \1/p') \
		$(BIN)/herald --config config/herald.yaml asyncapi --output docs/asyncapi.json

bench: $(STAMP)  ## Herald vs the peer, end to end; results into BENCHMARKS.md (BENCH_ARGS=...)
	$(BIN)/python -m bench.mime --write
	$(BIN)/python -m bench.run --write $(BENCH_ARGS)
	$(BIN)/python -m bench.eos --write $(EOS_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check service tests bench
	$(BIN)/mypy service

clean:
	rm -rf $(VENV) var .pytest_cache  # .cache/ (the Kafka jars) stays: reruns need no network

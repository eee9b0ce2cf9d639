# t5pod: every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Test processes: the suite is mostly single-threaded compilation and tests that wait on the
# commands they start, so one more worker than this machine's 2 cores keeps both busy (measured:
# 15m22s with 2 workers, 14m57s with 3, cold compilation cache); work stealing evens the tail.
TEST_WORKERS ?= 3

.PHONY: install install-gpu install-tpu lint test test-fast pretrain finetune study bench docs lock clean

install: $(STAMP)

# The stamp is rebuilt whenever the declared or pinned dependencies change.
$(STAMP): setup.cfg pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $@

# On Cloud TPU VMs: the pinned environment plus JAX's TPU runtime (libtpu) for the pinned jax.
install-tpu: install
	$(BIN)/pip install --quiet "jax[tpu]==$$(sed -n 's/^jax==//p' requirements.lock)"

# On NVIDIA GPU machines: the pinned environment plus JAX's CUDA 12 plugin of the pinned jax version
# (with CUDA's own libraries as pip wheels, at the versions that plugin requires).
install-gpu: install
	$(BIN)/pip install --quiet "jax[cuda12]==$$(sed -n 's/^jax==//p' requirements.lock)"

# Lint and format gate (ruff, configured in pyproject.toml); `ruff format .` fixes the format.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The unit tests: no test marked slow or e2e (CI runs them all through `make test`).
test-fast: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m "not slow and not e2e" $(PYTEST_ARGS)

# Pretrains the tiny model on the embedded demo corpus (gin/demo.gin): no download, CPU is enough.
# Running it again resumes from the newest checkpoint in runs/demo. Extra flags: PRETRAIN_ARGS=...
PRETRAIN_ARGS ?=
pretrain: install
	$(BIN)/python -m t5pod train --gin_file=demo.gin $(PRETRAIN_ARGS)

# Fine-tunes the `make pretrain` checkpoint on SST-2 (gin/demo_finetune.gin) and prints its
# validation accuracy. GLUE files come from GLUE_DIR (TFDS's glue/sst2 when it is empty).
GLUE_DIR ?= $(wildcard ../shared/data/glue)
PRETRAINED ?= runs/demo
FINETUNE_ARGS ?=
finetune: install
	test -d $(PRETRAINED)/checkpoints || $(MAKE) pretrain
	$(BIN)/python -m t5pod train --gin_file=demo_finetune.gin --gin.INITIAL_CHECKPOINT_PATH="'$(PRETRAINED)'" $(if $(GLUE_DIR),--gin.GLUE_DIR="'$(GLUE_DIR)'") $(FINETUNE_ARGS)
	$(BIN)/python -m t5pod eval --all_checkpoints --gin_file=runs/eval.gin --gin_file=demo_finetune.gin $(if $(GLUE_DIR),--gin.GLUE_DIR="'$(GLUE_DIR)'") $(FINETUNE_ARGS)

# The paper's study (Tables 1 and 4) at CPU scale, and the transfer rows (STUDY_ARGS=--rows=transfer):
# scripts/study.py --preset=cpu, described in study/README.md. On 2 cores a pre-training takes about
# 45 minutes (80 to 100 for prefix LM, BERT-style, deshuffling), a transfer fine-tuning 4 to 7; results
# in study/cpu/. GLUE_DIR, SUPERGLUE_DIR: the benchmark files; STUDY_TEXT: a file pattern of English
# text to pre-train on; STUDY_ARGS: more flags (--rows=..., --seeds=..., --transfer_starts=...).
SUPERGLUE_DIR ?= $(wildcard ../shared/data/superglue)
STUDY_TEXT ?= $(if $(wildcard ../shared/data/pretrain/gutenberg),../shared/data/pretrain/gutenberg/*.txt)
study: install
	$(BIN)/python scripts/study.py --preset=cpu --glue_dir='$(GLUE_DIR)' --superglue_dir='$(SUPERGLUE_DIR)' \
		--text_file_pattern='$(STUDY_TEXT)' $(STUDY_ARGS)

# Speed and memory figures (python -m bench.run): prints a table, writes bench/results.json.
bench: install
	$(BIN)/python -m bench.run

# Rewrites the pin list from the current environment.
# docs/settings.md, the table of gin macros, from the comments beside them in gin/.
docs: install
	$(BIN)/python -m t5pod.settings docs/settings.md

lock: install
	( sed -n '1,2p' requirements.lock; $(BIN)/pip freeze --exclude-editable | grep -v '^t5pod' | sed 's/+cpu$$//' ) > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

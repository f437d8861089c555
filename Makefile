# defectseg: every target sets itself up (.venv on first use). Pass Hydra overrides with ARGS="...":
#   make finetune ARGS="freeze=scratch trainer.max_epochs=50"
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
NOW := $(shell date +%Y-%m-%d_%H-%M-%S)
DEMO_DIR ?= outputs/demo/$(NOW)
COMPARE_DIR ?= outputs/compare/$(NOW)
LE_DIR ?= outputs/label_efficiency/$(NOW)
EXPERIMENT ?= quick
SEEDS ?= 0,1,2
MODES ?= scratch,encoder,none
BUDGETS ?= 10,25,50,100,null

.PHONY: help install demo pretrain finetune compare label-efficiency report test tensorboard data bench clean

help:
	@echo "make demo              two stages on the embedded data, sized for a laptop CPU (~10 min), Table-1 summary"
	@echo "make pretrain          stage 1: encoder as crack classifier (paper protocol: Adam, lr 1e-4, 100 epochs)"
	@echo "make finetune          stage 2: decoder on defect masks with the stage-1 encoder frozen"
	@echo "make compare           sweep scratch / frozen / full fine-tuning x 3 seeds: report.md, report.csv, compare.png"
	@echo "make label-efficiency  Dice vs number of labelled images, scratch vs transfer"
	@echo "make test              the test suite"
	@echo "make bench             training/inference throughput: pipeline vs bare PyTorch loop, GFLOP/s, memory -> benchmarks/results.md"
	@echo "make tensorboard       TensorBoard over outputs/"
	@echo "Hydra overrides go in ARGS=\"...\", e.g. make finetune ARGS=\"freeze=scratch\""

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,launchers]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m defectseg.pretrain experiment=quick hydra.run.dir=$(DEMO_DIR)/pretrain $(ARGS)
	$(PY) -m defectseg.finetune -m experiment=quick freeze=scratch,encoder hydra.sweep.dir=$(DEMO_DIR)/finetune $(ARGS)
	$(PY) -m defectseg.report $(DEMO_DIR)/finetune

pretrain: $(STAMP)
	$(PY) -m defectseg.pretrain $(ARGS)

finetune: $(STAMP)
	$(PY) -m defectseg.finetune $(ARGS)

data: $(STAMP)
	$(PY) -m defectseg.data.synthetic cls data/synthetic_concrete_cracks_227px_n1000_seed0 --n 1000
	$(PY) -m defectseg.data.synthetic seg data/synthetic_steel_defects_256px_n175_seed0 --n 175

compare: $(STAMP)
	$(PY) -m defectseg.pretrain experiment=$(EXPERIMENT) hydra.run.dir=$(COMPARE_DIR)/pretrain $(ARGS)
	$(PY) -m defectseg.finetune -m experiment=$(EXPERIMENT) freeze=$(MODES) seed=$(SEEDS) pretrained_encoder=$(COMPARE_DIR)/pretrain hydra.sweep.dir=$(COMPARE_DIR)/finetune $(ARGS)
	$(PY) -m defectseg.report $(COMPARE_DIR)/finetune

# Equal optimiser steps for every budget: each epoch draws 120 images (with replacement) from the labelled subset.
label-efficiency: $(STAMP)
	$(PY) -m defectseg.pretrain experiment=$(EXPERIMENT) hydra.run.dir=$(LE_DIR)/pretrain $(ARGS)
	$(PY) -m defectseg.finetune -m experiment=$(EXPERIMENT) freeze=scratch,encoder seed=$(SEEDS) dataset.max_train_images=$(BUDGETS) dataset.samples_per_epoch=120 pretrained_encoder=$(LE_DIR)/pretrain hydra.sweep.dir=$(LE_DIR)/finetune $(ARGS)
	$(PY) -m defectseg.report $(LE_DIR)/finetune

report: $(STAMP)
	$(PY) -m defectseg.report $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

# Pass benchmark options in ARGS, e.g. make bench ARGS="--steps 40 --repeats 3 --note 'quiet machine'"
bench: $(STAMP)
	$(PY) benchmarks/throughput.py $(ARGS)

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir outputs $(ARGS)

clean:
	rm -rf outputs data .pytest_cache

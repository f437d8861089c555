# defectseg: every target sets itself up (.venv on first use). Pass Hydra overrides with ARGS="...":
#   make finetune ARGS="transfer=scratch trainer.max_epochs=50"
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
NOW := $(shell date +%Y-%m-%d_%H-%M-%S)
DEMO_DIR ?= outputs/demo/$(NOW)
DEMO_CLASSES_DIR ?= outputs/demo_classes/$(NOW)
# The embedded steel set's four defect kinds as classes (make demo-classes; docs/defect_types.md)
STEEL_CLASSES ?= [crack,corrosion,pit,scratch]
COMPARE_DIR ?= outputs/compare/$(NOW)
LE_DIR ?= outputs/label_efficiency/$(NOW)
EXPERIMENT ?= quick
# Stage 1 of make compare and make label-efficiency: trained once into STAGE1_DIR, then reused by every later run of the
# same stage-1 config (pretrain reuse=true; another config is refused, naming the keys). experiment=quick's stage 1 is the
# paper's scale, 2x20,000 photos: ~38 min once on a 2-core CPU (smaller ones do not transfer: docs/results/index.md).
STAGE1_DIR ?= outputs/stage1/$(EXPERIMENT)
# Overrides for stage 1 only (ARGS go to both stages), e.g. STAGE1_ARGS="dataset=folder_cls dataset.root=DIR" with its own STAGE1_DIR.
STAGE1_ARGS ?=
# make demo and make compare-pretrain (three stage 1s) keep a 2x400-photo, 8-epoch stage 1: the mechanics in minutes.
SMALL_STAGE1 ?= dataset.synthetic.n_per_class=400 train_steps=320
SEEDS ?= 0,1,2
# Stage-2 recipes compared (conf/transfer/*.yaml, docs/transfer.md): scratch, the paper's frozen encoder, the recommended one
MODES ?= scratch,frozen_encoder,full_finetune
LE_MODES ?= scratch,frozen_encoder,full_finetune
BUDGETS ?= 10,25,50,100,null
# Real public sets (../shared/datasets, absent on most machines): make compare-real, make label-efficiency-real
SHARED_DATASETS ?= ../shared/datasets
REAL_DIR ?= outputs/compare_real/$(NOW)
REAL_LE_DIR ?= outputs/label_efficiency_real/$(NOW)
REAL_PRETRAIN ?= real_crack_cls
REAL_SETS ?= real_magnetic_tile,real_crackforest,real_deepcrack
REAL_LE_SET ?= real_magnetic_tile
REAL_BUDGETS ?= 10,25,50,100,null
REAL_ENCODER ?=
# Stage-1 objectives compared (make compare-pretrain, compare-pretrain-real)
PRETRAIN_DIR ?= outputs/compare_pretrain/$(NOW)
REAL_PRETRAIN_DIR ?= outputs/compare_pretrain_real/$(NOW)
PRETRAIN_MODES ?= encoder,none
REAL_PRETRAIN_MODES ?= encoder,partial,none
REAL_LE_MODES ?= scratch,encoder,none
# make transfer-real: every recipe x real set x label budget x seed, from one stage 1 on real crack photos
TRANSFER_DIR ?= outputs/transfer_real/$(NOW)
TRANSFER_STAGE1_DIR ?= outputs/stage1/real_crack_cls
TRANSFER_RECIPES ?= scratch,frozen_encoder,full_finetune,staged,gradual,discriminative
TRANSFER_BUDGETS ?= 25,50,null
# make transfer-real-crossseg: stage 1 = the whole U-Net segmenting the *other* crack set's masks (a clean source for each
# target), then full fine-tuning with its decoder (init_decoder=true) beside scratch, at CROSSSEG_BUDGETS labels
CROSSSEG_DIR ?= outputs/transfer_crossseg/$(NOW)
CROSSSEG_STAGE1_STEPS ?= 880
CROSSSEG_BUDGETS ?= 25,50
PRETRAIN_ENCODERS = $(1)/pretrain_classification,$(1)/pretrain_segmentation,$(1)/pretrain_self_supervised
REAL_SKIP = if [ ! -d "$(SHARED_DATASETS)" ]; then echo "$@: skipped, no real data sets at $(SHARED_DATASETS) (set SHARED_DATASETS=DIR)"; exit 0; fi

.PHONY: docs lint help install demo demo-classes pretrain finetune predict export check-data compare label-efficiency compare-real label-efficiency-real compare-pretrain compare-pretrain-real transfer-real transfer-real-crossseg report test tensorboard data bench clean

help:
	@echo "make demo              both stages on the embedded data, no download, no GPU (minutes on a laptop CPU; its small stage 1"
	@echo "                         shows the mechanics, not the gain): scratch, the paper's frozen encoder and the recommended recipe"
	@echo "                         (transfer=$(MODES)) side by side, then the report"
	@echo "make demo-classes      the demo with the four defect kinds as classes (crack, corrosion, pit, scratch): Dice per class"
	@echo "make pretrain          stage 1: encoder as crack classifier (paper protocol: Adam, lr 1e-4, 100 epochs)"
	@echo "make finetune          stage 2: the U-Net on defect masks from the stage-1 encoder, by the recommended recipe (transfer=full_finetune;"
	@echo "                         transfer=scratch|frozen_encoder|staged|gradual|discriminative|partial_frozen, experiment=paper: the paper's frozen encoder)"
	@echo "make check-data        check a data set (counts, sizes, mask values, bad files, duplicates), e.g. ARGS=\"dataset=folder_seg dataset.root=DIR\""
	@echo "make predict           masks, overlays, defect measurements for photos: ARGS=\"input=PHOTO|FOLDER|'GLOB'\""
	@echo "make export            the latest fine-tuned model as ONNX + TorchScript, checked against PyTorch"
	@echo "make compare           stage 1 at the paper's scale, built once into STAGE1_DIR=$(STAGE1_DIR) and then reused (7 min to generate"
	@echo "                         2x20,000 photos + 34 min to train on a 2-core CPU, 2026-11-25), then transfer=$(MODES)"
	@echo "                         x 3 seeds (18 min): report.md, report.csv, compare.png"
	@echo "make label-efficiency  Dice vs number of labelled images, transfer=$(LE_MODES), with the same reused stage 1"
	@echo "make compare-real      the comparison on real photos (SHARED_DATASETS=DIR; skipped without): stage 1 on real crack photos, 3 real sets x 3 modes x 3 seeds"
	@echo "make label-efficiency-real  Dice vs labelled images on one real set (REAL_LE_SET) x freeze=$(REAL_LE_MODES); REAL_ENCODER=DIR reuses any stage-1 run"
	@echo "make compare-pretrain  stage 1 by each objective (classification, segmentation, self_supervised), then transfer x freeze=$(PRETRAIN_MODES) + scratch x seeds, one report:"
	@echo "                         for t in classification segmentation self_supervised; do python -m defectseg.pretrain experiment=$(EXPERIMENT) pretrain_task=\$$t $(SMALL_STAGE1) hydra.run.dir=DIR/pretrain_\$$t; done"
	@echo "                         python -m defectseg.finetune -m experiment=$(EXPERIMENT) freeze=$(PRETRAIN_MODES) seed=$(SEEDS) pretrained_encoder=$(call PRETRAIN_ENCODERS,DIR) hydra.sweep.dir=DIR/finetune/transfer"
	@echo "                         python -m defectseg.finetune -m experiment=$(EXPERIMENT) freeze=scratch seed=$(SEEDS) hydra.sweep.dir=DIR/finetune/scratch"
	@echo "                         python -m defectseg.report DIR/finetune"
	@echo "make compare-pretrain-real  the same on real photos: stage 1 classification on real_crack_cls, segmentation on real_crack_seg,"
	@echo "                         self_supervised on real_unlabelled_magnetic_tile; stage 2 on real_magnetic_tile x freeze=$(REAL_PRETRAIN_MODES)"
	@echo "                         (+ the segmenter's decoder, init_decoder=true) x seeds (skips without $(SHARED_DATASETS))"
	@echo "make transfer-real     every recipe (TRANSFER_RECIPES) x real set x label budget ($(TRANSFER_BUDGETS)) x seeds from one stage 1 on real crack"
	@echo "                         photos (reused from TRANSFER_STAGE1_DIR): one report (skips without $(SHARED_DATASETS); hours on a CPU, docs/transfer.md)"
	@echo "make transfer-real-crossseg  stage 1 segments DeepCrack's masks for CrackForest and CrackForest's for DeepCrack"
	@echo "                         (CROSSSEG_STAGE1_STEPS), then scratch and full fine-tuning with the segmenter's decoder x"
	@echo "                         CROSSSEG_BUDGETS x seeds: one report (skips without $(SHARED_DATASETS); docs/transfer.md)"
	@echo "make test              the test suite"
	@echo "make lint              ruff lint and format check (CI runs it before the tests)"
	@echo "make bench             training speed vs a bare loop and Keras/TF, tiled predict MP/s and memory -> benchmarks/results.md"
	@echo "make tensorboard       TensorBoard over outputs/ (HParams tab: every job's recipe, seed, label budget, Dice)"
	@echo "make docs              the documentation site (docs/) at http://127.0.0.1:8000"
	@echo "Hydra overrides go in ARGS=\"...\", e.g. make finetune ARGS=\"transfer=scratch\""

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,launchers]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m defectseg.pretrain experiment=quick $(SMALL_STAGE1) hydra.run.dir=$(DEMO_DIR)/pretrain $(ARGS)
	$(PY) -m defectseg.finetune -m experiment=quick transfer=$(MODES) pretrained_encoder=$(DEMO_DIR)/pretrain hydra.sweep.dir=$(DEMO_DIR)/finetune $(ARGS)
	$(PY) -m defectseg.report $(DEMO_DIR)/finetune

# The same small stage 1, then scratch vs full fine-tuning with one output per defect kind; the report shows Dice per class.
demo-classes: $(STAMP)
	$(PY) -m defectseg.pretrain experiment=quick $(SMALL_STAGE1) hydra.run.dir=$(DEMO_CLASSES_DIR)/pretrain $(ARGS)
	$(PY) -m defectseg.finetune -m experiment=quick transfer=scratch,full_finetune 'dataset.classes=$(STEEL_CLASSES)' pretrained_encoder=$(DEMO_CLASSES_DIR)/pretrain hydra.sweep.dir=$(DEMO_CLASSES_DIR)/finetune $(ARGS)
	$(PY) -m defectseg.report $(DEMO_CLASSES_DIR)/finetune

pretrain: $(STAMP)
	$(PY) -m defectseg.pretrain $(ARGS)

finetune: $(STAMP)
	$(PY) -m defectseg.finetune $(ARGS)

predict: $(STAMP)
	$(PY) -m defectseg.predict $(ARGS)

export: $(STAMP)
	$(PY) -m defectseg.export $(ARGS)

data: $(STAMP)
	$(PY) -m defectseg.data.synthetic cls data/synthetic_concrete_cracks_227px_n1000_seed0 --n 1000
	$(PY) -m defectseg.data.synthetic seg data/synthetic_steel_defects_256px_n175_seed0_clean_mixed --n 175

check-data: $(STAMP)
	$(PY) -m defectseg.check_data $(ARGS)

# Stage 1 trains only when STAGE1_DIR holds none of this config (a killed one continues); COMPARE_DIR/pretrain links to it.
compare: $(STAMP)
	$(PY) -m defectseg.pretrain experiment=$(EXPERIMENT) reuse=true hydra.run.dir=$(STAGE1_DIR) $(STAGE1_ARGS) $(ARGS)
	mkdir -p $(COMPARE_DIR) && ln -sfn $(abspath $(STAGE1_DIR)) $(COMPARE_DIR)/pretrain
	$(PY) -m defectseg.finetune -m experiment=$(EXPERIMENT) transfer=$(MODES) seed=$(SEEDS) pretrained_encoder=$(STAGE1_DIR) hydra.sweep.dir=$(COMPARE_DIR)/finetune $(ARGS)
	$(PY) -m defectseg.report $(COMPARE_DIR)/finetune

# Equal optimiser steps for every budget: each epoch draws 120 images (with replacement) from the labelled subset.
label-efficiency: $(STAMP)
	$(PY) -m defectseg.pretrain experiment=$(EXPERIMENT) reuse=true hydra.run.dir=$(STAGE1_DIR) $(STAGE1_ARGS) $(ARGS)
	mkdir -p $(LE_DIR) && ln -sfn $(abspath $(STAGE1_DIR)) $(LE_DIR)/pretrain
	$(PY) -m defectseg.finetune -m experiment=$(EXPERIMENT) transfer=$(LE_MODES) seed=$(SEEDS) dataset.max_train_images=$(BUDGETS) dataset.samples_per_epoch=120 pretrained_encoder=$(STAGE1_DIR) hydra.sweep.dir=$(LE_DIR)/finetune $(ARGS)
	$(PY) -m defectseg.report $(LE_DIR)/finetune

# Stage 1 on the real crack folders (split by source photo), then scratch / frozen / full fine-tuning on each
# real segmentation set at 175 labelled train images x 3 seeds, then the report. Skips without the shared sets.
compare-real: $(STAMP)
	@$(REAL_SKIP); set -ex; \
	$(PY) -m defectseg.pretrain experiment=real dataset=$(REAL_PRETRAIN) paths.shared_datasets=$(SHARED_DATASETS) hydra.run.dir=$(REAL_DIR)/pretrain $(ARGS); \
	$(PY) -m defectseg.finetune -m experiment=real dataset=$(REAL_SETS) transfer=$(MODES) seed=$(SEEDS) paths.shared_datasets=$(SHARED_DATASETS) pretrained_encoder=$(REAL_DIR)/pretrain hydra.sweep.dir=$(REAL_DIR)/finetune $(ARGS); \
	$(PY) -m defectseg.report $(REAL_DIR)/finetune

# REAL_ENCODER=outputs/compare_real/<run>/pretrain reuses compare-real's stage 1; null = the whole 175-image budget.
label-efficiency-real: $(STAMP)
	@$(REAL_SKIP); set -ex; \
	encoder="$(REAL_ENCODER)"; \
	if [ -z "$$encoder" ]; then encoder=$(REAL_LE_DIR)/pretrain; \
	  $(PY) -m defectseg.pretrain experiment=real dataset=$(REAL_PRETRAIN) paths.shared_datasets=$(SHARED_DATASETS) hydra.run.dir=$$encoder $(ARGS); fi; \
	$(PY) -m defectseg.finetune -m experiment=real dataset=$(REAL_LE_SET) freeze=$(REAL_LE_MODES) seed=$(SEEDS) dataset.max_train_images=$(REAL_BUDGETS) dataset.samples_per_epoch=175 paths.shared_datasets=$(SHARED_DATASETS) pretrained_encoder=$$encoder hydra.sweep.dir=$(REAL_LE_DIR)/finetune $(ARGS); \
	$(PY) -m defectseg.report $(REAL_LE_DIR)/finetune

# Stage 1 by each objective, then ONE multirun of the transfer modes over the three encoders x seeds, and one of scratch x seeds.
# Scratch loads no encoder, so crossing it with pretrained_encoder would train the same job three times: the two
# multiruns sit side by side (finetune/transfer, finetune/scratch) and the report reads both, with scratch the one reference.
compare-pretrain: $(STAMP)
	set -e; for task in classification segmentation self_supervised; do \
	  $(PY) -m defectseg.pretrain experiment=$(EXPERIMENT) pretrain_task=$$task $(SMALL_STAGE1) hydra.run.dir=$(PRETRAIN_DIR)/pretrain_$$task $(ARGS); done
	$(PY) -m defectseg.finetune -m experiment=$(EXPERIMENT) freeze=$(PRETRAIN_MODES) seed=$(SEEDS) pretrained_encoder=$(call PRETRAIN_ENCODERS,$(PRETRAIN_DIR)) hydra.sweep.dir=$(PRETRAIN_DIR)/finetune/transfer $(ARGS)
	$(PY) -m defectseg.finetune -m experiment=$(EXPERIMENT) freeze=scratch seed=$(SEEDS) hydra.sweep.dir=$(PRETRAIN_DIR)/finetune/scratch $(ARGS)
	$(PY) -m defectseg.report $(PRETRAIN_DIR)/finetune

compare-pretrain-real: $(STAMP)
	@$(REAL_SKIP); set -ex; \
	common="experiment=real paths.shared_datasets=$(SHARED_DATASETS)"; \
	$(PY) -m defectseg.pretrain $$common pretrain_task=classification dataset=real_crack_cls hydra.run.dir=$(REAL_PRETRAIN_DIR)/pretrain_classification $(ARGS); \
	$(PY) -m defectseg.pretrain $$common pretrain_task=segmentation dataset=real_crack_seg hydra.run.dir=$(REAL_PRETRAIN_DIR)/pretrain_segmentation $(ARGS); \
	$(PY) -m defectseg.pretrain $$common pretrain_task=self_supervised dataset=real_unlabelled_magnetic_tile hydra.run.dir=$(REAL_PRETRAIN_DIR)/pretrain_self_supervised $(ARGS); \
	$(PY) -m defectseg.finetune -m $$common dataset=real_magnetic_tile freeze=$(REAL_PRETRAIN_MODES) seed=$(SEEDS) pretrained_encoder=$(call PRETRAIN_ENCODERS,$(REAL_PRETRAIN_DIR)) hydra.sweep.dir=$(REAL_PRETRAIN_DIR)/finetune/transfer $(ARGS); \
	$(PY) -m defectseg.finetune -m $$common dataset=real_magnetic_tile freeze=encoder,none init_decoder=true seed=$(SEEDS) pretrained_encoder=$(REAL_PRETRAIN_DIR)/pretrain_segmentation hydra.sweep.dir=$(REAL_PRETRAIN_DIR)/finetune/transfer_init_decoder $(ARGS); \
	$(PY) -m defectseg.finetune -m $$common dataset=real_magnetic_tile freeze=scratch seed=$(SEEDS) hydra.sweep.dir=$(REAL_PRETRAIN_DIR)/finetune/scratch $(ARGS); \
	$(PY) -m defectseg.report $(REAL_PRETRAIN_DIR)/finetune

# The recipes on the real sets: stage 1 once (reuse=true: a finished one in TRANSFER_STAGE1_DIR is used as is), then one
# multirun over recipes x sets x label budgets (equal optimiser steps: 175 sampled images per epoch) x seeds, then the report.
transfer-real: $(STAMP)
	@$(REAL_SKIP); set -ex; \
	$(PY) -m defectseg.pretrain experiment=real dataset=$(REAL_PRETRAIN) reuse=true paths.shared_datasets=$(SHARED_DATASETS) hydra.run.dir=$(TRANSFER_STAGE1_DIR) $(STAGE1_ARGS); \
	mkdir -p $(TRANSFER_DIR) && ln -sfn $(abspath $(TRANSFER_STAGE1_DIR)) $(TRANSFER_DIR)/pretrain; \
	$(PY) -m defectseg.finetune -m experiment=real dataset=$(REAL_SETS) transfer=$(TRANSFER_RECIPES) seed=$(SEEDS) dataset.max_train_images=$(TRANSFER_BUDGETS) dataset.samples_per_epoch=175 paths.shared_datasets=$(SHARED_DATASETS) pretrained_encoder=$(TRANSFER_STAGE1_DIR) hydra.sweep.dir=$(TRANSFER_DIR)/finetune $(ARGS); \
	$(PY) -m defectseg.report $(TRANSFER_DIR)/finetune

transfer-real-crossseg: $(STAMP)
	@$(REAL_SKIP); set -ex; \
	for pair in crackforest:deepcrack deepcrack:crackforest; do target=$${pair%%:*}; source=$${pair##*:}; \
	  $(PY) -m defectseg.pretrain experiment=real pretrain_task=segmentation dataset=real_crack_seg "dataset.root=[$(SHARED_DATASETS)/$$source]" train_steps=$(CROSSSEG_STAGE1_STEPS) reuse=true hydra.run.dir=$(CROSSSEG_DIR)/pretrain_$$source $(STAGE1_ARGS); \
	  $(PY) -m defectseg.finetune -m experiment=real dataset=real_$$target transfer=full_finetune init_decoder=true seed=$(SEEDS) dataset.max_train_images=$(CROSSSEG_BUDGETS) dataset.samples_per_epoch=175 paths.shared_datasets=$(SHARED_DATASETS) pretrained_encoder=$(CROSSSEG_DIR)/pretrain_$$source hydra.sweep.dir=$(CROSSSEG_DIR)/finetune/$$target $(ARGS); \
	done; \
	$(PY) -m defectseg.finetune -m experiment=real dataset=real_crackforest,real_deepcrack transfer=scratch seed=$(SEEDS) dataset.max_train_images=$(CROSSSEG_BUDGETS) dataset.samples_per_epoch=175 paths.shared_datasets=$(SHARED_DATASETS) hydra.sweep.dir=$(CROSSSEG_DIR)/finetune/scratch $(ARGS); \
	$(PY) -m defectseg.report $(CROSSSEG_DIR)/finetune

report: $(STAMP)
	$(PY) -m defectseg.report $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

# ruff: lint and formatting (configured in pyproject.toml); CI runs it before the tests
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Pass benchmark options in ARGS, e.g. make bench ARGS="--steps 40 --repeats 3 --note 'quiet machine'"
# and tiled-predict options in PREDICT_ARGS, e.g. PREDICT_ARGS="--layouts grid,fitted --runtimes torch,torch-bf16,onnx"
bench: $(STAMP)
	$(PY) benchmarks/throughput.py $(ARGS)
	$(PY) benchmarks/predict_speed.py $(PREDICT_ARGS)

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir outputs $(ARGS)

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve $(ARGS)

clean:
	rm -rf outputs data .pytest_cache

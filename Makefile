# The README's commands. Each sets up its own virtual environment (.venv) unless one is active.
PYTHON ?= python3
VENV ?= .venv
# The releases this machine serves from its disk; override on other platforms (e.g. aarch64: torch==2.9.1 torchvision==0.24.1)
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

ifdef VIRTUAL_ENV
BIN := $(VIRTUAL_ENV)/bin
else
BIN := $(VENV)/bin
endif
STAMP := $(BIN)/.cbam-installed

.PHONY: setup run detect attentions paper finetune test test-all format

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

## The main job on the embedded default: does attention help? ResNet-18 (a quarter of its widths, CIFAR stem, 32 px)
## without attention, with SE and with CBAM, 3 seeds each, two runs at a time (about 15 minutes on 2 CPU cores);
## mean errors and paired differences with 95% intervals and a verdict, in runs/cluttered-digits/
run: $(STAMP)
	$(BIN)/cbam compare --arch resnet18 --attention none,se,cbam --seeds 3 --jobs 2 --data cluttered-digits \
		--recipe cluttered-digits-compare --output runs/cluttered-digits

## After `make run`: Faster R-CNN C4 from each seed of its ResNet-18 and ResNet-18 + CBAM, at the 32 px its backbones
## were trained at, 3 seeds each, two at a time; mean mAP and the paired difference with 95% intervals and a verdict,
## beside the paper's Table 7 (COCO), in runs/detect-cluttered-digits/
detect: $(STAMP)
	$(BIN)/cbam detect compare --table table7 --backbone resnet18 --backbone-runs runs/cluttered-digits \
		--recipe cluttered-digits-compare --seeds 3 --jobs 2 --output runs/detect-cluttered-digits

## Which attention helps? ResNet-18 without attention and with each of SE, ECA, eSE, GE, GC, CoordAtt, SimAM,
## Triplet and CBAM, under make run's recipe (cluttered-digits-compare), 3 seeds each, two runs at a time (30 runs,
## 57 minutes on 2 CPU cores, measured); every row against the plain network with 95% intervals, in runs/attentions/
attentions: $(STAMP)
	$(BIN)/cbam compare --arch resnet18 --attention none,se,eca,ese,ge,gc,coord,simam,triplet,cbam --seeds 3 \
		--jobs 2 --data cluttered-digits --recipe cluttered-digits-compare --output runs/attentions

## The paper's Tables 4 and 5 (parameters, GFLOPs) rebuilt and counted, beside the printed figures
paper: $(STAMP)
	$(BIN)/cbam profile --paper-table 4 --paper-table 5

## Does adding CBAM to a pretrained network hurt? ResNet-18 pretrained on lightly cluttered digits, fine-tuned on
## heavily cluttered ones plain / + CBAM (paper init) / + CBAM (identity init) over 3 seeds, in runs/finetune/
## (about 17 minutes on 2 CPU cores; docs/finetuning.md holds the figures)
finetune: $(STAMP)
	$(BIN)/python experiments/finetune_init.py --output runs/finetune

## Lint, format check and the default (fast) test suite; CI runs exactly this
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/ruff format --check src tests benchmarks experiments
	$(BIN)/python -m pytest

## Everything, the heavy tests (full-size networks at 224 px) included
test-all: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow"

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

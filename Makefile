# `make test` is the project's one test command: README and .ci/run both call it.
PYTHON ?= python3

.PHONY: install tools test demo lint bench

install:
	$(PYTHON) -m pip install -q -e ".[test]"

# dciodvfy (Debian dicom3tools) validates our DICOM outputs; its tests skip where it cannot be installed.
tools:
	@command -v dciodvfy >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dicom3tools >/dev/null; \
	  else sudo -n apt-get install -y -qq dicom3tools >/dev/null 2>&1; fi; } || \
	  echo "note: dicom3tools could not be installed; dciodvfy checks will be skipped"

lint: install
	$(PYTHON) -m ruff check src tests benchmarks

test: install tools lint
	$(PYTHON) -m medhub verify --all
	$(PYTHON) -m pytest -n 2 -q

demo:
	$(PYTHON) -m pip install -q -e . && medhub demo

bench: install
	$(PYTHON) -m pip install -q -e ".[bench]"
	$(PYTHON) benchmarks/dicom_load.py
	$(PYTHON) benchmarks/dicom_decoders.py
	$(PYTHON) benchmarks/seg_write.py
	$(PYTHON) benchmarks/end_to_end.py

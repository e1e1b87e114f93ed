# `make test` is the project's one test command: README and .ci/run both call it.
PYTHON ?= python3

.PHONY: install tools test demo lint bench

install:
	$(PYTHON) -m pip install -q -e ".[test]"

# dciodvfy (Debian dicom3tools) validates our DICOM outputs; chromium and chromium-driver run the dashboard's browser
# tests. Tests that need them skip, saying why, where they cannot be installed.
TOOLS_PACKAGES = dicom3tools chromium chromium-driver
tools:
	@command -v dciodvfy >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TOOLS_PACKAGES) >/dev/null; \
	  else sudo -n apt-get install -y -qq $(TOOLS_PACKAGES) >/dev/null 2>&1; fi; } || \
	  echo "note: $(TOOLS_PACKAGES) could not all be installed; the tests that need them will be skipped"

lint: install
	$(PYTHON) -m ruff check src tests benchmarks

test: install tools lint
	$(PYTHON) -m medhub verify --all
	SE_OFFLINE=true $(PYTHON) -m pytest -n 2 -q

demo:
	$(PYTHON) -m pip install -q -e . && medhub demo

bench: install
	$(PYTHON) -m pip install -q -e ".[bench]"
	$(PYTHON) benchmarks/dicom_load.py
	$(PYTHON) benchmarks/dicom_decoders.py
	$(PYTHON) benchmarks/seg_write.py
	$(PYTHON) benchmarks/end_to_end.py

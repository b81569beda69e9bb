# `make test` and `make demo` do all the set-up on a fresh machine: a venv in .venv, the pinned
# packages, and the build of rescale_ext._C (C++ always; CUDA when torch has CUDA and nvcc is found).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export CUDA_HOME ?= /usr/local/cuda
export TORCH_CUDA_ARCH_LIST ?= 9.0
export MAX_JOBS ?= 2
EXT := rescale_ext/_C.abi3.so
SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cpp csrc/cuda/*.h csrc/cuda/*.cu)

# the page test drives Debian's chromium through chromium-driver (nothing is downloaded at run time)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup build browser photos test demo bench clean

setup: $(VENV)/.installed
build: $(EXT)

$(VENV)/.installed: requirements.txt requirements-test.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -r requirements.txt -r requirements-test.txt
	touch $@

$(EXT): $(VENV)/.installed $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	test -f $(EXT)
	touch $(EXT)

browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing chromium and chromium-driver (apt-get) for the page test"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; \
	fi

# the demo's probe reads Debian's camera photos beside its 4 held-out ones (packages, nothing else is
# fetched); without them it reads the 4 alone and its report says so
photos:
	@if [ ! -d /usr/share/doc/opencv-doc/examples/data ] || [ ! -d /usr/share/palapeli/collection ]; then \
	  echo "installing opencv-doc and palapeli-data (apt-get): the demo's probe photos"; \
	  ( $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq opencv-doc palapeli-data ) \
	  || echo "warning: opencv-doc and palapeli-data could not be installed: the demo's probe reads its 4 held-out photos alone"; \
	fi

test: build browser
	$(PY) -m pytest -q tests

demo: build photos
	$(PY) -m fitgap.demo

bench: build
	$(PY) benchmarks/bench_rescale.py

clean:
	rm -rf build *.egg-info rescale_ext/_C*.so

# Everything a fresh machine needs: `make demo` and `make test` create .venv and install first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-all fuzz bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and exactly (an open-ended requirement would pull a multi-GB CUDA build);
# lava-nc without its Python cap (docs/lava.md), then the project.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps --ignore-requires-python lava-nc==0.10.0
	$(PIP) install -q -e '.[test,interop]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider

test-all: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

fuzz: $(STAMP)
	FUZZ_EXAMPLES=2000 $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py

# speed and size figures quoted in the README (each script prints its table)
bench: $(STAMP)
	$(PY) benchmarks/cpu_sim.py
	OPENBLAS_CORETYPE=Haswell $(PY) benchmarks/cpu_sim.py
	$(PY) benchmarks/lava_throughput.py
	$(PY) benchmarks/rnn.py --lava
	$(PY) benchmarks/mapping.py

clean:
	rm -rf $(VENV) build *.egg-info

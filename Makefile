# Two commands a new user needs: `make demo` and `make test`.
# Each creates .venv on first use (CPU build of torch where no GPU is present),
# and reuses it afterwards.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TORCH  := torch==2.13.0

.PHONY: demo test app bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# CPU build of torch where no GPU is present: the local wheel if pip's
	@# find-links has one, otherwise PyTorch's CPU index.  Never the multi-GB CUDA build.
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/pip install -q '$(TORCH)'; \
	else \
		$(BIN)/pip install -q --no-index --no-deps '$(TORCH)' 2>/dev/null || \
		$(BIN)/pip install -q '$(TORCH)' --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple; \
	fi
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/diagnose demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

app: $(STAMP)
	$(BIN)/streamlit run app/main.py

bench: $(STAMP)
	$(BIN)/diagnose bench

clean-venv:
	rm -rf $(VENV)

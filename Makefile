# The two quick-start commands are `make run` and `make test`; both create the
# virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lint protos venv clean lock manifests assets screenshots

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

run: venv
	$(VENV)/bin/lifecycle up

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf format --diff --exit-code

protos: venv
	$(PY) protos/generate.py

# The container's locked dependencies (Dockerfile), with hashes: run after changing pyproject.toml.
LOCK := $(VENV)/bin/uv pip compile --universal --python-version 3.11 --generate-hashes --custom-compile-command 'make lock'
lock: venv
	$(LOCK) pyproject.toml -o requirements.lock
	$(PY) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')" | $(LOCK) - -o requirements-build.lock

# The per-service Kubernetes manifests (deploy/k8s/base/generated) from their template.
manifests: venv
	$(PY) deploy/k8s/generate.py

# The console's front-end libraries, rebuilt from console/assets/package-lock.json
# (npm ci) and copied, with the licences of every package they bundle, to
# console/static/vendor, which is committed: running the console needs no npm.
ASSETS := console/assets
VENDOR := console/static/vendor
assets:
	cd $(ASSETS) && npm ci --ignore-scripts --no-audit --no-fund
	rm -rf $(VENDOR) && mkdir -p $(VENDOR)/licenses
	cp $(ASSETS)/node_modules/bpmn-js/dist/bpmn-viewer.production.min.js $(VENDOR)/
	cp $(ASSETS)/node_modules/bpmn-js/dist/assets/diagram-js.css $(ASSETS)/node_modules/bpmn-js/dist/assets/bpmn-js.css $(VENDOR)/
	cp $(ASSETS)/node_modules/chart.js/dist/chart.umd.min.js $(VENDOR)/
	cd $(ASSETS)/node_modules && for license in $$(find . -maxdepth 3 -iname 'LICENSE*' -not -path '*/node_modules/*/node_modules/*'); do \
		cp "$$license" "$(CURDIR)/$(VENDOR)/licenses/$$(dirname "$$license" | sed 's|^\./||; s|/|__|g').$$(basename "$$license")"; done

# The console's screenshots in the README (docs/images/), taken by its browser
# test over a short run of the demo.
screenshots: venv
	LIFECYCLE_SCREENSHOTS=$(CURDIR)/docs/images $(PY) -m pytest -q -p no:cacheprovider tests/console/test_screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The two commands of the README. Both create .venv/ (once) and install everything into it.
PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: setup docker demo test synth bench clean

.venv/.installed: pyproject.toml constraints.txt package.json package-lock.json
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	# checkov pins boto3 1.35 / packaging<24: it gets its own folder inside .venv, run through a wrapper.
	$(PIP) install --quiet --no-warn-conflicts --target .venv/tools/checkov 'checkov==3.3.30'
	install -m 755 tools/checkov .venv/bin/checkov
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: .venv/.installed

# Train the demo decoder on synthetic t15 data streamed from a local S3 endpoint: no AWS account needed.
demo: setup
	$(PY) -m launcher start --local -y

# The container suite (tests/container) needs a Docker daemon: tools/docker-up installs Debian's
# docker.io and starts one where it can (root + apt), and says why not elsewhere (then the suite
# reports itself skipped). Quick when already done.
docker:
	@tools/docker-up

test: setup docker
	$(PY) -m pytest

synth: setup
	JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20 npx cdk synth --quiet

bench: setup
	$(PY) bench/learn.py
	$(PY) bench/stream.py
	$(PY) bench/dry_run.py
	$(PY) bench/shm.py

clean:
	rm -rf .venv node_modules cdk.out runs .pytest_cache

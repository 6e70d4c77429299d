# Training image for SageMaker. SageMaker starts it as `docker run IMAGE train` (AWS docs, "How
# Amazon SageMaker AI Runs Your Training Image"); the entry point below takes `train`, no
# argument, or the trainer's own flags, and reads the /opt/ml tree (trainer/environment.py).
# Build and push with `python -m launcher image --run` (prints the docker commands without --run).
#
# Every Python package is installed at the version CI tests: constraints.txt pins them all,
# torch included (torch==2.13.0; PyPI's Linux wheel brings its CUDA libraries). The build fails
# if the torch that ends up in the image is not that pin.
#
# BASE_IMAGE needs python 3.11 (the version CI runs) at /usr/local/bin; where Docker Hub is out
# of reach, tools/standin-base builds a stand-in from Debian's packages. PIP_NO_INDEX and
# PIP_FIND_LINKS (build args) point pip at a wheelhouse instead of an index
# (tests/container/images.py serves one made with the host's pip configuration).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/b2t

# Dependencies first (a layer that survives code edits), every one at its constraints.txt pin.
COPY pyproject.toml constraints.txt ./
# (The project's dependencies and its plot and tensorboard extras; tests/container/images.py reads the same.)
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['plot'] + p['optional-dependencies']['tensorboard']))" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && python -c "import re, torch; pin = re.search(r'^torch==(\S+)', open('constraints.txt').read(), re.M).group(1); \
v = torch.__version__.split('+')[0]; assert v == pin, f'torch {v} in the image, constraints.txt pins {pin}'; print('torch', torch.__version__)"

# The code (README.md is the package's long description). infra/ and launcher/ stay out (.dockerignore).
COPY README.md ./
COPY trainer/ trainer/
RUN pip install --no-deps . && python -c "import trainer.environment"

ENTRYPOINT ["python", "-m", "trainer"]

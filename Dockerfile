# Training image for SageMaker: `python -m trainer` reads the /opt/ml tree (container contract in
# trainer/environment.py). Build and push with `python -m launcher image --run` (prints the
# docker commands without --run).
#
# The base image brings CUDA and its own torch build; the project is installed on top with that
# torch pinned, so pip can neither replace nor re-download it.
ARG BASE_IMAGE=pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/b2t

# Dependencies first (a layer that survives code edits), with the base image's torch held fixed.
COPY pyproject.toml README.md ./
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/constraints.txt \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
deps = p['dependencies'] + p['optional-dependencies']['plot'] + p['optional-dependencies']['tensorboard']; \
print('\n'.join(d for d in deps if not d.replace(' ', '').startswith('torch')))" > /tmp/requirements.txt \
    && pip install -c /tmp/constraints.txt -r /tmp/requirements.txt

# The code. The trainer imports infra.outputs nowhere; infra/ and launcher/ stay out (.dockerignore).
COPY trainer/ trainer/
RUN pip install --no-deps -c /tmp/constraints.txt . \
    && python -c "import torch, trainer.environment; print('torch', torch.__version__)"

ENTRYPOINT ["python", "-m", "trainer"]

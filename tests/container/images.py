"""Build the training image on a machine without Docker Hub: a stand-in base, a wheelhouse, the Dockerfile.

- Base: ``tools/standin-base`` (Debian's packages through debootstrap, then ``docker import``;
  cached per machine under a tag that hashes its recipe).
- Wheels: ``pip download`` on the host, with the host's own pip configuration (its indexes,
  certificates and local wheel folders; pip inside a container sees none of it), of the
  project's runtime dependencies under ``constraints.txt``; cached outside the repository,
  keyed by the hash of ``pyproject.toml`` and ``constraints.txt``.
- Image: ``docker build --build-arg BASE_IMAGE=<stand-in>`` with pip pointed at the wheelhouse,
  served on 127.0.0.1 for the duration of the build (the build runs with host networking).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import logging
import os
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("B2T_CACHE_DIR") or Path.home() / ".cache" / "b2t-sagemaker")
# setuptools builds the project inside the image (pyproject's build-system); pip needs it offline too.
BUILD_REQUIREMENTS = ("setuptools>=77",)


def runtime_requirements() -> list[str]:
    """What the Dockerfile installs: the project's dependencies and its plot and tensorboard extras."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [*project["dependencies"], *extras["plot"], *extras["tensorboard"], *BUILD_REQUIREMENTS]


class NoBase(RuntimeError):
    """This machine cannot build the stand-in base (no debootstrap, not root)."""


def standin_base() -> str:
    """The stand-in base image's name (built once per machine)."""
    import shutil

    if shutil.which("debootstrap") is None and shutil.which("debootstrap", path="/usr/sbin:/sbin") is None:
        raise NoBase("no debootstrap to build a stand-in base (apt-get install debootstrap, or set B2T_BASE_IMAGE)")
    if os.geteuid() != 0:
        raise NoBase("building the stand-in base (debootstrap) needs root; or set B2T_BASE_IMAGE")
    proc = subprocess.run([str(REPO / "tools" / "standin-base")], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"tools/standin-base failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def wheelhouse() -> Path:
    """A folder of wheels for everything the image installs, made with the host's pip config."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + (REPO / "constraints.txt").read_bytes()
                         + "\n".join(BUILD_REQUIREMENTS).encode()).hexdigest()[:12]
    out = CACHE / f"wheelhouse-{key}"
    if (out / ".complete").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:",
           "-c", str(REPO / "constraints.txt"), "-d", str(out), *runtime_requirements()]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip download failed: {proc.stderr.strip()[-2000:]}")
    (out / ".complete").write_text("")
    return out


@contextlib.contextmanager
def served(folder: Path) -> Iterator[str]:
    """``folder`` as a pip find-links page on 127.0.0.1, for as long as the block runs. The port is
    derived from the folder's name where it is free, so the URL (a build argument, hence part of
    docker's cache key for the install layer) stays the same from one build to the next."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    preferred = 20000 + int(hashlib.sha256(folder.name.encode()).hexdigest(), 16) % 20000
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", preferred), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # one line per wheel is noise in the build log
        pass


INPUTS_LABEL = "b2t.build-inputs"


def build_inputs(base: str, wheels: Path) -> str:
    """A hash of everything the image is built from: the base, the wheels, and the build context."""
    h = hashlib.sha256(f"{base}\n{wheels.name}\n".encode())
    files = [REPO / "Dockerfile", REPO / ".dockerignore", REPO / "pyproject.toml", REPO / "README.md",
             REPO / "constraints.txt", *sorted(p for p in (REPO / "trainer").rglob("*")
                                             if p.is_file() and "__pycache__" not in p.parts)]
    for path in files:
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_image(tag: str, base: str, wheels: Path) -> bool:
    """``docker build`` of the project's Dockerfile on ``base``, installing only from ``wheels``;
    skipped (False) when ``tag`` was already built from the very same inputs."""
    inputs = build_inputs(base, wheels)
    found = subprocess.run(["docker", "image", "inspect", "--format", f'{{{{index .Config.Labels "{INPUTS_LABEL}"}}}}',
                            tag], capture_output=True, text=True)
    if found.returncode == 0 and found.stdout.strip() == inputs:
        log.info("%s is up to date (%s)", tag, inputs)
        return False
    with served(wheels) as url:
        cmd = ["docker", "build", "--network", "host", "-t", tag, "--label", f"{INPUTS_LABEL}={inputs}",
               "--build-arg", f"BASE_IMAGE={base}",
               "--build-arg", "PIP_NO_INDEX=1",
               "--build-arg", f"PIP_FIND_LINKS={url}",
               str(REPO)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    if proc.returncode != 0:
        raise RuntimeError(f"docker build failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    log.info("built %s on %s", tag, base)
    return True

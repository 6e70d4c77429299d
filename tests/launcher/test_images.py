"""Images: ECR tags are immutable, so `image` tags each build apart and `start` takes the newest."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess

import pytest

from infra import outputs as keys
from launcher.commands.image import default_tag
from trainer.config import DEMO_CONFIG

from tests.launcher.conftest import IMAGE_TAG, push_image

# moto deploys the synthesized template but skips what it cannot model (bucket policies).
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse")

NOW = dt.datetime(2026, 11, 29, 10, 15, 7, tzinfo=dt.timezone.utc)
OLDER, NEWER = "0a1b2c3d4e5f", "9f8e7d6c5b4a-dirty-20261129101507"


@pytest.fixture
def two_images(no_image):
    """Two images, the newer pushed first (neither list order nor name order gives it away)."""
    push_image(no_image.server, no_image.repository, NEWER, pushed_at=NOW - dt.timedelta(minutes=5))
    push_image(no_image.server, no_image.repository, OLDER, pushed_at=NOW - dt.timedelta(days=2))
    return no_image


def dry_run(cli, *extra):
    code, out, err = cli("start", "--config", DEMO_CONFIG, "--dry-run", *extra)
    assert code == 0, err
    return out, json.loads(out[out.index("{"):])


def image_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("image:"))


# ---------------------------------------------------------------------------------------
# start: the newest image, or the one --image-tag names


def test_start_takes_the_newest_pushed_image(two_images, cli):
    out, request = dry_run(cli)
    uri = two_images.outputs[keys.ECR_REPOSITORY_URI]
    assert request["AlgorithmSpecification"]["TrainingImage"] == f"{uri}:{NEWER}"
    assert image_line(out) == f"image:       {uri}:{NEWER} (newest, pushed 2026-11-29 10:10 UTC)"


def test_start_submits_with_the_newest_image(two_images, cli):
    code, out, err = cli("start", "--config", DEMO_CONFIG, "-y")
    assert code == 0, err
    job = next(line.split()[1] for line in out.splitlines() if line.startswith("submitted "))
    desc = two_images.client("sagemaker").describe_training_job(TrainingJobName=job)
    assert desc["AlgorithmSpecification"]["TrainingImage"].endswith(":" + NEWER)


def test_image_tag_picks_an_older_image(two_images, cli):
    out, request = dry_run(cli, "--image-tag", OLDER)
    assert request["AlgorithmSpecification"]["TrainingImage"].endswith(":" + OLDER)
    assert image_line(out).endswith("(pushed 2026-11-27 10:15 UTC)")


def test_untagged_images_are_not_chosen(two_images, cli, monkeypatch):
    from launcher import jobs

    real = jobs.list_images
    untagged = {"imageDigest": "sha256:" + "c" * 64, "imagePushedAt": NOW}
    monkeypatch.setattr(jobs, "list_images", lambda aws, outputs: [untagged, *real(aws, outputs)])
    _, request = dry_run(cli)
    assert request["AlgorithmSpecification"]["TrainingImage"].endswith(":" + NEWER)


def test_start_without_any_image_says_how_to_push_one(no_image, cli):
    code, _, err = cli("start", "--config", DEMO_CONFIG, "-y")
    assert code != 0 and err.strip().splitlines() == [
        "error: no image in b2t-training yet: build and push one with `python -m launcher image --run`"
    ]
    code, out, err = cli("start", "--config", DEMO_CONFIG, "-y", "--dry-run")  # says which tag it would use
    assert code == 0 and "this is the tag `python -m launcher image --run` would push" in " ".join(out.split())
    assert no_image.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []
    assert "Contents" not in no_image.client("s3").list_objects_v2(Bucket=no_image.output_bucket)


def test_plan_with_image_the_notebook_path_takes_the_newest_too(two_images):
    from launcher import launch
    from launcher.aws import Aws
    from launcher.stack import read_stack_outputs

    aws = Aws()
    outputs = read_stack_outputs(aws)
    plan = launch.plan_with_image(aws, launch.StartOptions(), launch.load(DEMO_CONFIG, ()), outputs)
    assert plan.spec.image_tag == NEWER and plan.image_newest


def test_local_mode_needs_no_image(tmp_path, cli, monkeypatch):
    monkeypatch.setattr("launcher.jobs.find_image", lambda *a: pytest.fail("local mode looked up ECR"))
    code, out, _ = cli("start", "--local", "--dry-run", "--runs-dir", tmp_path)
    assert code == 0 and '"TrainingImage": "000000000000.dkr.ecr.us-east-1.amazonaws.com/b2t-training:local"' in out


def test_resume_keeps_the_first_jobs_image_after_a_newer_push(deployed, cli):
    code, out, _ = cli("start", "--config", DEMO_CONFIG, "-y")
    job = next(line.split()[1] for line in out.splitlines() if line.startswith("submitted "))
    deployed.training_job(job).training_job_status = "Stopped"
    push_image(deployed.server, deployed.repository, NEWER, pushed_at=dt.datetime.now(dt.timezone.utc))
    code, out, err = cli("resume", job, "--dry-run")
    assert code == 0, err
    assert json.loads(out[out.index("{"):])["AlgorithmSpecification"]["TrainingImage"].endswith(":" + IMAGE_TAG)
    code, out, err = cli("resume", job, "--dry-run", "--image-tag", NEWER)
    assert json.loads(out[out.index("{"):])["AlgorithmSpecification"]["TrainingImage"].endswith(":" + NEWER)


def test_resume_of_a_multi_instance_job_keeps_its_instances_unless_told(deployed, cli):
    code, out, _ = cli("start", "--config", DEMO_CONFIG, "--instance-count", "2", "-y")
    job = next(line.split()[1] for line in out.splitlines() if line.startswith("submitted "))
    deployed.training_job(job).training_job_status = "Failed"
    code, out, err = cli("resume", job, "--dry-run")
    assert code == 0, err
    assert json.loads(out[out.index("{"):])["ResourceConfig"]["InstanceCount"] == 2
    code, out, err = cli("resume", job, "--dry-run", "--instance-count", "1")
    assert json.loads(out[out.index("{"):])["ResourceConfig"]["InstanceCount"] == 1


# ---------------------------------------------------------------------------------------
# image: a tag of its own for every build


def fake_git(commit, status):
    def git(args, cwd):
        return commit if args[0] == "rev-parse" else status

    return git


def test_default_tag_of_a_clean_checkout_is_its_commit():
    assert default_tag(now=NOW, git=fake_git("3f2a9c1b7d4e", "")) == ("3f2a9c1b7d4e", "git commit 3f2a9c1b7d4e")


def test_default_tag_of_a_dirty_checkout_has_a_utc_time():
    tag, source = default_tag(now=NOW, git=fake_git("3f2a9c1b7d4e", " M trainer/train.py"))
    assert tag == "3f2a9c1b7d4e-dirty-20261129101507" and "uncommitted changes" in source
    later = dt.datetime(2026, 11, 29, 12, 15, 7, tzinfo=dt.timezone(dt.timedelta(hours=2)))  # same instant
    assert default_tag(now=later, git=fake_git("3f2a9c1b7d4e", "?? x"))[0] == tag


def test_default_tag_without_git_is_a_utc_timestamp():
    assert default_tag(now=NOW, git=fake_git(None, None))[0] == "build-20261129101507"


def test_default_tag_from_a_real_git_checkout(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    assert default_tag(tmp_path, now=NOW)[0] == "build-20261129101507"  # not a repository yet
    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("commit", "-q", "-m", "one")
    tag, _ = default_tag(tmp_path, now=NOW)
    assert re.fullmatch(r"[0-9a-f]{12}", tag)
    (tmp_path / "a.txt").write_text("2")
    assert default_tag(tmp_path, now=NOW)[0] == f"{tag}-dirty-20261129101507"


def test_image_prints_the_commands_for_the_default_tag(deployed, cli, monkeypatch):
    monkeypatch.setattr("launcher.commands.image.default_tag", lambda: ("3f2a9c1b7d4e-dirty-x", "why"))
    code, out, _ = cli("image")
    uri = deployed.outputs[keys.ECR_REPOSITORY_URI]
    assert code == 0 and out.splitlines()[0] == "# image tag 3f2a9c1b7d4e-dirty-x (why)"
    assert f"docker push {uri}:3f2a9c1b7d4e-dirty-x" in out


@pytest.fixture
def docker(monkeypatch):
    calls = []
    monkeypatch.setattr("subprocess.call", lambda step: calls.append(step) or 0)
    return calls


def test_image_run_pushes_a_new_tag(deployed, cli, docker, monkeypatch):
    monkeypatch.setattr("launcher.commands.image.default_tag", lambda: (NEWER, "git commit 9f8e7d6c5b4a, changed"))
    code, out, _ = cli("image", "--run")
    uri = deployed.outputs[keys.ECR_REPOSITORY_URI]
    assert code == 0 and [step[:2] for step in docker] == [["sh", "-c"], ["docker", "build"], ["docker", "push"]]
    assert docker[-1] == ["docker", "push", f"{uri}:{NEWER}"]
    assert out.splitlines()[0] == f"image tag {NEWER} (git commit 9f8e7d6c5b4a, changed)"


def test_image_run_of_an_already_pushed_commit_builds_nothing(deployed, cli, docker, monkeypatch):
    monkeypatch.setattr("launcher.commands.image.default_tag", lambda: (IMAGE_TAG, "git commit"))
    code, out, _ = cli("image", "--run")
    assert code == 0 and docker == [] and "already pushed" in out and f"--image-tag {IMAGE_TAG}" in out


def test_image_run_refuses_to_reuse_a_tag(deployed, cli, docker):
    code, _, err = cli("image", "--run", "--tag", IMAGE_TAG)
    assert code == 1 and docker == [] and "immutable: pick another --tag" in err


def test_image_list_marks_the_newest(two_images, cli):
    code, out, _ = cli("image", "--list")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(NEWER) and "newest" in lines[0] and lines[1].startswith(OLDER)


def test_image_list_of_an_empty_repository(no_image, cli):
    code, out, _ = cli("image", "--list")
    assert code == 0 and "no image in b2t-training yet" in out

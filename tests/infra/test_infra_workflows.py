"""The deploy and image workflows in both modes: the OIDC `sub` GitHub would put in the job's
token equals the one the stack, synthesized with the context that job passes, trusts.

The workflow files are read as GitHub reads them (YAML anchors resolved); each mode sets the
repository variable AWS_DEPLOY_ENVIRONMENT, evaluates the jobs' `if:`, and runs the synth
step's own shell line with `npx cdk synth` replaced by printing its arguments.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.infra.conftest import REPO_ROOT, synthesize
from tests.infra.test_infra_template import one

REPOSITORY = "example-lab/b2t-sagemaker"
REF = "refs/heads/main"
WORKFLOWS = REPO_ROOT / ".github" / "workflows"
MODES = {"branch": "", "environment": "production"}


def workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def expand(text: str, variables: dict[str, str]) -> str:
    """`${{ vars.X }}` / `${{ github.X }}` as GitHub expands them for a push to main."""
    values = {"github.ref": REF, "github.repository": REPOSITORY, "github.run_id": "1",
              **{f"vars.{k}": v for k, v in variables.items()}}
    return re.sub(r"\$\{\{\s*([\w.]+)\s*\}\}", lambda m: values[m.group(1)], text)


def runs(job: dict, variables: dict[str, str]) -> bool:
    match = re.fullmatch(r"vars\.(\w+) (==|!=) ''", job["if"])
    assert match, f"unexpected condition {job['if']!r}"
    empty = variables.get(match.group(1), "") == ""
    return empty if match.group(2) == "==" else not empty


def the_job(name: str, variables: dict[str, str]) -> dict:
    (job,) = [j for j in workflow(name)["jobs"].values() if runs(j, variables)]
    return job


def token_sub(job: dict, variables: dict[str, str]) -> str:
    """GitHub's rule ("About security hardening with OpenID Connect")."""
    environment = expand(job.get("environment", ""), variables)
    return f"repo:{REPOSITORY}:environment:{environment}" if environment else f"repo:{REPOSITORY}:ref:{REF}"


def cdk_args(job: dict, step_name: str, variables: dict[str, str]) -> list[str]:
    (step,) = [s for s in job["steps"] if s.get("name", "").startswith(step_name)]
    command = re.sub(r"npx cdk (synth|deploy)( --\S+)*( never)?", "printf '%s\\n'", step["run"])
    env = {k: expand(str(v), variables) for k, v in job["env"].items()}
    out = subprocess.run(["bash", "-c", command], env={**env, "GITHUB_REPOSITORY": REPOSITORY, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return [a for a in out if a]


def context_of(args: list[str]) -> dict[str, str]:
    assert args[0::2] == ["-c"] * (len(args) // 2), args
    return dict(a.split("=", 1) for a in args[1::2])


@pytest.fixture(scope="module", params=list(MODES))
def mode(request, tmp_path_factory):
    variables = {"AWS_DEPLOY_ENVIRONMENT": MODES[request.param], "CDK_DEPLOY_ARGS": "-c kms_key=true"}
    job = the_job("deploy.yml", variables)
    synth_args = cdk_args(job, "Synthesize", variables)
    assert cdk_args(job, "Deploy", variables) == synth_args
    synth = synthesize(tmp_path_factory.mktemp(f"cdk-{request.param}"), **context_of(synth_args))
    return request.param, variables, job, synth


def trusted_sub(synth, path_part: str) -> str:
    _, role = one(synth.body, "AWS::IAM::Role", path_part)
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    return trust["Condition"]["StringEquals"]["token.actions.githubusercontent.com:sub"]


def test_exactly_one_job_runs_in_each_mode():
    for name in ("deploy.yml", "image.yml"):
        for value in MODES.values():
            assert sum(runs(j, {"AWS_DEPLOY_ENVIRONMENT": value}) for j in workflow(name)["jobs"].values()) == 1


def test_deploy_keeps_the_trust_its_token_needs(mode):
    name, variables, job, synth = mode
    expected = f"repo:{REPOSITORY}:ref:{REF}" if name == "branch" else f"repo:{REPOSITORY}:environment:production"
    assert token_sub(job, variables) == expected
    assert trusted_sub(synth, "/CiDeploy/") == expected


def test_image_job_token_is_trusted_by_the_image_role(mode):
    _, variables, _, synth = mode
    image_job = the_job("image.yml", variables)
    assert trusted_sub(synth, "/CiImage/") == token_sub(image_job, variables)


def test_image_workflow_tags_with_the_commit_like_launcher_image():
    from launcher.commands.image import default_tag

    run = "\n".join(s.get("run", "") for s in workflow("image.yml")["jobs"]["push-branch"]["steps"])
    assert 'tag="$(git rev-parse --short=12 HEAD)"' in run
    clean = {("rev-parse", "--short=12", "HEAD"): "3f2a9c1b7d4e", ("status", "--porcelain"): ""}
    assert default_tag(git=lambda args, cwd: clean[tuple(args)])[0] == "3f2a9c1b7d4e"


def test_image_workflow_runs_when_the_image_changes():
    paths = set(workflow("image.yml")[True]["push"]["paths"])  # YAML 1.1 reads `on` as True
    assert {"trainer/**", "Dockerfile", "pyproject.toml", "constraints.txt"} <= paths


def test_zizmor_reports_nothing():
    zizmor = Path(__import__("sys").executable).parent / "zizmor"
    if not zizmor.exists():
        pytest.fail(f"{zizmor} is missing: run `make setup`")
    run = subprocess.run([str(zizmor), "--offline", str(REPO_ROOT / ".github")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and "No findings to report" in run.stdout + run.stderr, run.stdout + run.stderr

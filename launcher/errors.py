"""Domain errors of the launcher.

Every error a user can fix is a :class:`LauncherError`; the CLI prints its message as
one line and exits non-zero. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LauncherError(Exception):
    """A problem the user can fix; ``str(err)`` is one actionable line."""

    exit_code = 1


class UsageError(LauncherError):
    exit_code = 2


class NoCredentials(LauncherError):
    def __init__(self, rejected: str = "") -> None:
        head = f"AWS rejected the credentials ({rejected})" if rejected else "no AWS credentials found"
        super().__init__(
            f"{head}: run `aws configure` / `aws sso login` or set AWS_PROFILE "
            "(or try `python -m launcher start --local -y`, which needs no AWS account)"
        )


class StackNotFound(LauncherError):
    def __init__(self, stack: str, region: str) -> None:
        self.stack, self.region = stack, region
        super().__init__(
            f"stack {stack!r} not found in {region}: deploy it (`npx cdk deploy`), "
            "or pass --stack NAME / --region REGION"
        )


class MissingOutput(LauncherError):
    def __init__(self, stack: str, keys: list[str]) -> None:
        self.stack, self.keys = stack, keys
        super().__init__(
            f"stack {stack!r} lacks output{'s' if len(keys) > 1 else ''} {', '.join(keys)}: "
            "it was deployed from an older version; redeploy it (`npx cdk deploy`)"
        )


class RegionMismatch(LauncherError):
    def __init__(self, what: str, found: str, expected: str) -> None:
        self.what, self.found, self.expected = what, found, expected
        super().__init__(
            f"{what} is in {found} but the launcher is using {expected}: "
            f"pass --region {found} (or set AWS_REGION={found})"
        )


class ImageNotPushed(LauncherError):
    def __init__(self, repository: str, tag: str) -> None:
        self.repository, self.tag = repository, tag
        super().__init__(
            f"image tag {tag!r} is not in ECR repository {repository!r}: pick a pushed tag "
            f"(`python -m launcher image --list`), or leave --image-tag out to use the newest"
        )


class NoImage(LauncherError):
    def __init__(self, repository: str) -> None:
        self.repository = repository
        super().__init__(f"no image in {repository} yet: build and push one with `python -m launcher image --run`")


class MissingSessions(LauncherError):
    def __init__(self, url: str, sessions: list[str], hint: str = "upload them with `python -m launcher upload DIR`") -> None:
        self.url, self.sessions = url, sessions
        shown = ", ".join(sessions[:6]) + (f" (+{len(sessions) - 6} more)" if len(sessions) > 6 else "")
        super().__init__(
            f"{len(sessions)} configured session{'s' if len(sessions) > 1 else ''} missing "
            f"data_train.hdf5 under {url}: {shown}; {hint}"
        )


class JobNotFound(LauncherError):
    def __init__(self, job: str) -> None:
        self.job = job
        super().__init__(f"training job {job!r} not found (see `python -m launcher list`)")


class InvalidRequest(LauncherError):
    """The CreateTrainingJob request fails botocore's offline validation (a launcher bug or bad flag)."""


class AwsError(LauncherError):
    """Any other AWS refusal, reported as ``<operation>: <code>: <message>``."""


class JobNameTaken(LauncherError):
    """Job names are never reused: a second job of one name would overwrite the first's config."""

    def __init__(self, job: str, where: str) -> None:
        self.job = job
        super().__init__(
            f"job name {job!r} is taken ({where}): names are never reused, so nothing of that job is "
            "overwritten; pick another --job-name (or leave it out for a new one)"
        )

"""boto3 sessions and clients, and the translation of AWS failures into domain errors.

boto3 is imported lazily so that ``--help`` and config validation stay fast. Endpoints
follow boto3's own environment variables (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``),
which is how the tests and local mode point the launcher at a moto server.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Optional

from .errors import AwsError, LauncherError, NoCredentials, UsageError

log = logging.getLogger(__name__)

_CREDENTIAL_CODES = {
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
}


class Aws:
    """One boto3 session and its clients, created on first use."""

    def __init__(
        self,
        region: Optional[str] = None,
        profile: Optional[str] = None,
        endpoint_url: Optional[str] = None,
        credentials: Optional[tuple[str, str]] = None,
    ):
        import boto3
        from botocore.config import Config

        with aws_errors("reading the AWS configuration"):
            key, secret = credentials or (None, None)
            self.session = boto3.Session(
                region_name=region, profile_name=profile, aws_access_key_id=key, aws_secret_access_key=secret
            )
        if not self.session.region_name:
            raise UsageError("no AWS region configured: pass --region REGION or set AWS_REGION")
        self.region: str = self.session.region_name
        self._config = Config(retries={"mode": "standard", "max_attempts": 5}, user_agent_extra="b2t-launcher")
        self._endpoint_url = endpoint_url  # local mode's S3 endpoint; else boto3's own resolution
        self._clients: dict[str, Any] = {}

    def client(self, service: str):
        if service not in self._clients:
            self._clients[service] = self.session.client(
                service, config=self._config, endpoint_url=self._endpoint_url
            )
        return self._clients[service]

    @property
    def sagemaker(self):
        return self.client("sagemaker")

    @property
    def s3(self):
        return self.client("s3")

    @property
    def logs(self):
        return self.client("logs")


def error_code(err: BaseException) -> str:
    return getattr(err, "response", {}).get("Error", {}).get("Code", "")


@contextlib.contextmanager
def aws_errors(operation: str) -> Iterator[None]:
    """Turn botocore failures inside the block into one-line :class:`LauncherError`s."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    try:
        yield
    except LauncherError:
        raise
    except (NoCredentialsError, PartialCredentialsError) as e:
        raise NoCredentials() from e
    except ProfileNotFound as e:
        raise UsageError(f"{e} (check AWS_PROFILE / --profile)") from e
    except NoRegionError as e:
        raise UsageError("no AWS region configured: pass --region REGION or set AWS_REGION") from e
    except EndpointConnectionError as e:
        raise AwsError(f"{operation}: cannot reach {e.kwargs.get('endpoint_url', 'the AWS endpoint')}") from e
    except ClientError as e:
        code = error_code(e)
        message = e.response.get("Error", {}).get("Message", "")
        if code in _CREDENTIAL_CODES:
            raise NoCredentials(code) from e
        raise AwsError(f"{operation}: {code}: {message}".rstrip(": ")) from e

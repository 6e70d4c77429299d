"""AWS sessions and clients, and the translation of AWS failures into domain errors.

Clients come from botocore directly (boto3 and s3transfer are imported only by the
commands that transfer files), lazily, so that ``-h``, config validation and ``--dry-run``
stay fast. Endpoints follow the SDKs' environment variables (``AWS_ENDPOINT_URL``,
``AWS_ENDPOINT_URL_S3``), which is how the tests and local mode reach a moto server.
"""

from __future__ import annotations

import contextlib
import logging
import os
from functools import lru_cache
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


CONNECT_TIMEOUT_S = 3
MAX_ATTEMPTS = 3  # standard mode: the first try and two retries, ~3 s of backoff at most


def check_region(session, region: str) -> None:
    """A region name no AWS partition knows (``moon-1``) is a typo: say so before any call."""
    from botocore.exceptions import UnknownRegionError

    try:
        session.get_partition_for_region(region)
    except UnknownRegionError:
        raise UsageError(f"region {region!r} is not an AWS region name (e.g. us-east-1): check --region / AWS_REGION") from None


class Aws:
    """One botocore session and its clients, created on first use."""

    def __init__(
        self,
        region: Optional[str] = None,
        profile: Optional[str] = None,
        endpoint_url: Optional[str] = None,
        credentials: Optional[tuple[str, str]] = None,
    ):
        import botocore.session
        from botocore.config import Config

        with aws_errors("reading the AWS configuration"):
            self.session = botocore.session.Session(profile=profile)
            self.session.register_component("data_loader", _shared_loader())
            if credentials:
                self.session.set_credentials(*credentials)
            # botocore reads AWS_DEFAULT_REGION only; the AWS CLI and the other SDKs also AWS_REGION.
            resolved = region or os.environ.get("AWS_REGION") or self.session.get_config_variable("region")
        if not resolved:
            raise UsageError("no AWS region configured: pass --region REGION or set AWS_REGION")
        check_region(self.session, resolved)
        self.region: str = resolved
        # An endpoint that cannot be reached fails within seconds, naming it (aws_errors), rather
        # than after botocore's defaults (60 s connect timeout, backoff up to 20 s per retry).
        self._config = Config(
            retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
            connect_timeout=CONNECT_TIMEOUT_S,
            user_agent_extra="b2t-launcher",
        )
        self._endpoint_url = endpoint_url  # local mode's S3 endpoint; else boto3's own resolution
        self._clients: dict[str, Any] = {}

    def client(self, service: str):
        if service not in self._clients:
            with aws_errors(f"creating the {service} client"):
                self._clients[service] = self.session.create_client(
                    service, region_name=self.region, config=self._config, endpoint_url=self._endpoint_url
                )
        return self._clients[service]

    def boto3_session(self):
        """The same identity as a boto3 session (for the SageMaker SDK)."""
        import boto3

        return boto3.Session(botocore_session=self.session, region_name=self.region)

    @property
    def sagemaker(self):
        return self.client("sagemaker")

    @property
    def s3(self):
        return self.client("s3")

    @property
    def logs(self):
        return self.client("logs")


@lru_cache(maxsize=1)
def _shared_loader():
    """One botocore data loader per process: service models are parsed once, not per session."""
    from botocore.loaders import create_loader

    return create_loader()


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

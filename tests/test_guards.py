import socket

import pytest

from tests.conftest import RealNetworkBlocked


def test_real_aws_endpoint_is_unreachable():
    with pytest.raises(RealNetworkBlocked):
        socket.create_connection(("52.94.236.248", 443), timeout=1)


def test_loopback_is_allowed(moto_server):
    moto_server.client("s3").list_buckets()

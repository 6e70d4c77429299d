"""Credentials AWS refuses: moto with IAM authentication switched on gives the real errors
(InvalidClientTokenId for an unknown key, SignatureDoesNotMatch for a wrong secret); moto
never answers ExpiredToken, so a one-route HTTP endpoint answers it in CloudFormation's
query-protocol error format ("Common Errors" in the CloudFormation API reference)."""

from __future__ import annotations

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.launcher.test_errors import assert_one_line_error, no_jobs, start

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse")


def _auth_after(server, n_requests: str) -> None:
    """moto's switch: authenticate every request after the next ``n_requests`` ("inf": never)."""
    req = urllib.request.Request(f"{server.url}/moto-api/reset-auth", data=n_requests.encode(), method="POST",
                                 headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req).read()


@pytest.fixture
def enforcing(deployed, monkeypatch):
    """The deployed stack, a user with a real access key, and moto checking every signature."""
    iam = deployed.client("iam")
    iam.create_user(UserName="launcher")
    iam.put_user_policy(UserName="launcher", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="launcher")["AccessKey"]
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    _auth_after(deployed.server, "0")
    try:
        yield deployed, key
    finally:
        _auth_after(deployed.server, "inf")


def test_an_unknown_access_key_is_rejected_in_one_line(enforcing, cli, monkeypatch):
    deployed, _ = enforcing
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    code, _, err = start(cli)
    assert_one_line_error(code, err, "AWS rejected the credentials (InvalidClientTokenId)", "aws sso login")
    _auth_after(deployed.server, "inf")
    assert no_jobs(deployed.server)


def test_a_wrong_secret_is_rejected_in_one_line(enforcing, cli, monkeypatch):
    deployed, key = enforcing
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"][::-1])
    code, _, err = start(cli)
    assert_one_line_error(code, err, "AWS rejected the credentials (SignatureDoesNotMatch)", "aws sso login")
    _auth_after(deployed.server, "inf")
    assert no_jobs(deployed.server)


def test_the_right_key_gets_through(enforcing, cli, monkeypatch):
    """The same switch lets a correctly signed request through: the refusals above are about the keys."""
    deployed, key = enforcing
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    code, _, err = cli("list")
    assert code == 0, err


_EXPIRED = (b'<ErrorResponse xmlns="http://cloudformation.amazonaws.com/doc/2010-05-15/"><Error><Type>Sender</Type>'
            b"<Code>ExpiredToken</Code><Message>The security token included in the request is expired</Message>"
            b"</Error><RequestId>expired</RequestId></ErrorResponse>")


class _Expired(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(400)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(_EXPIRED)))
        self.end_headers()
        self.wfile.write(_EXPIRED)

    def log_message(self, *_args):
        pass


def test_an_expired_session_token_is_one_line(cli, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Expired)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
        code, _, err = start(cli)
    finally:
        server.shutdown()
    assert_one_line_error(code, err, "AWS rejected the credentials (ExpiredToken)", "aws sso login")

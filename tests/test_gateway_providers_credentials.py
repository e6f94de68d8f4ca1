"""Credentials that rotate or expire are read again while the gateway runs.

An Entra ID token in a secret file (`{env: VAR}` with `VAR_FILE`) for azure-openai, and the
standard AWS credential chain for bedrock (shared credentials file, container endpoint), rotated
under a running gateway (in-process, real loopback sockets): the fakes check the bearer token and
verify the SigV4 signature with the only key they accept, driven with the `openai` SDK.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from gateway.providers import aws, secrets
from kt.doctor import provider_check
from policies.config import load_config
from policies.lint import validate_document
from tests.fake_azure import FakeAzure
from tests.fake_bedrock import FakeBedrock
from tests.gateway_harness import write_config
from tests.waiting import wait_for

MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
HI = [{"role": "user", "content": "hi"}]
KEY_A = ("AKIAAAAAAAAAAAAAAAAA", "secret-a/0000000000000000000000000000000")
KEY_B = ("AKIABBBBBBBBBBBBBBBB", "secret-b/1111111111111111111111111111111")


def oai(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="client-key", max_retries=0, timeout=20)


def chat(gw: Any) -> str | None:
    return oai(gw).chat.completions.create(model="m", messages=HI).choices[0].message.content


def replace(path: Path, text: str) -> None:
    """Write `path` as a secret rotator does: a new file renamed over the old one."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- azure-openai: an Entra ID token in a secret file ----------------------------------------------


@pytest.fixture
def fake_azure() -> Iterator[FakeAzure]:
    fake = FakeAzure("Hello from Azure.", api_key="az-key-not-used-here-0123456789").start()
    yield fake
    fake.stop()


def entra_config(tmp_path: Path, fake: FakeAzure) -> Path:
    return write_config(tmp_path / "c.yaml", [
        {"id": "az", "provider": "azure-openai", "model": "m", "deployment": "chat", "base_url": fake.url,
         "secret_key_ref": {"env": "KT_TEST_ENTRA"}, "api_key_header": "Authorization"}])


def entra_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeAzure, token: str,
                     written: bool = True) -> Path:
    """`KT_TEST_ENTRA_FILE` names a token file (holding `token` when `written`) and the fake takes `token`."""
    path = tmp_path / "entra-token"
    if written:
        path.write_text(token + "\n")
    monkeypatch.delenv("KT_TEST_ENTRA", raising=False)
    monkeypatch.setenv("KT_TEST_ENTRA_FILE", str(path))
    fake.entra_token = token
    return path


def test_a_rotated_entra_token_file_authorises_the_next_request(tmp_path: Path, fake_azure: FakeAzure,
                                                                 start_gateway: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    token = entra_token_file(tmp_path, monkeypatch, fake_azure, "entra-token-1")
    gw = start_gateway(entra_config(tmp_path, fake_azure))
    assert chat(gw) == "Hello from Azure."
    assert fake_azure.requests[-1].header("authorization") == "Bearer entra-token-1"

    replace(token, "entra-token-2\n")  # the old token expired: Azure refuses it from now on
    fake_azure.entra_token = "entra-token-2"
    assert chat(gw) == "Hello from Azure.", "the very next request, after one 401 that made kt read the file"
    assert [r.header("authorization") for r in fake_azure.requests[-2:]] == ["Bearer entra-token-1",
                                                                            "Bearer entra-token-2"]
    chunks = list(oai(gw).chat.completions.create(model="m", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Azure."
    assert fake_azure.requests[-1].header("authorization") == "Bearer entra-token-2"

    # renewed ahead of expiry (the old token still works): used within secrets.RECHECK_S, with no 401
    fake_azure.entra_token = "entra-token-3"
    fake_azure.api_key = None  # (the fake now takes any bearer token)
    replace(token, "entra-token-3\n")
    wait_for(lambda: chat(gw) and fake_azure.requests[-1].header("authorization") == "Bearer entra-token-3",
             timeout=secrets.RECHECK_S + 5, interval=0.2)


def test_a_secret_file_that_appears_later_is_used(tmp_path: Path, fake_azure: FakeAzure, start_gateway: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    token = entra_token_file(tmp_path, monkeypatch, fake_azure, "entra-late", written=False)
    gw = start_gateway(entra_config(tmp_path, fake_azure))
    with pytest.raises(openai.APIStatusError) as err:
        chat(gw)
    assert str(token) in err.value.message and "KT_TEST_ENTRA_FILE" in err.value.message
    token.write_text("entra-late")
    assert wait_for(lambda: _served(gw), timeout=secrets.RECHECK_S + 5) == "Hello from Azure."
    assert fake_azure.requests[-1].header("authorization") == "Bearer entra-late"


def test_lint_and_doctor_take_a_secret_file_for_the_variable(tmp_path: Path, fake_azure: FakeAzure,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    entra_token_file(tmp_path, monkeypatch, fake_azure, "entra-doctor")
    config = entra_config(tmp_path, fake_azure)
    assert [f.code for f in validate_document(yaml.safe_load(config.read_text()))] == []
    (check,) = provider_check(load_config(config).targets[0], os.environ, 5)
    assert check.status == "ok" and "deployment 'chat' exists" in check.detail
    assert fake_azure.requests[-1].header("authorization") == "Bearer entra-doctor"
    assert "entra-doctor" not in check.detail + (check.fix or "")


def _served(gw: Any) -> str | None:
    try:
        return chat(gw)
    except openai.APIStatusError:
        return None


# --- bedrock: the standard AWS credential chain ----------------------------------------------------


@pytest.fixture
def fake_bedrock() -> Iterator[FakeBedrock]:
    fake = FakeBedrock("Hello from Bedrock.").start()
    yield fake
    fake.stop()


@pytest.fixture
def aws_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No AWS credentials anywhere but in a shared credentials file that does not exist yet."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return tmp_path / "aws-credentials"


def profile(key: tuple[str, str]) -> str:
    return f"[default]\naws_access_key_id = {key[0]}\naws_secret_access_key = {key[1]}\n"


def bedrock_config(tmp_path: Path, fake: FakeBedrock) -> Path:
    return write_config(tmp_path / "c.yaml", [{"id": "m", "provider": "bedrock", "model": MODEL,
                                               "region": "us-east-1", "base_url": fake.url}])


def test_rotated_shared_credentials_sign_the_next_request(tmp_path: Path, fake_bedrock: FakeBedrock,
                                                          aws_files: Path, start_gateway: Any) -> None:
    aws_files.write_text(profile(KEY_A))
    fake_bedrock.aws_keys = dict([KEY_A])
    gw = start_gateway(bedrock_config(tmp_path, fake_bedrock))
    assert chat(gw) == "Hello from Bedrock." and fake_bedrock.signed_with == [(KEY_A[0], None)]

    replace(aws_files, profile(KEY_B))  # key A rotated out: AWS refuses it from now on
    fake_bedrock.aws_keys = dict([KEY_B])
    assert chat(gw) == "Hello from Bedrock.", "the very next request, after one 403 that made kt resolve again"
    assert fake_bedrock.signed_with[-1] == (KEY_B[0], None)
    chunks = list(oai(gw).chat.completions.create(model="m", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Bedrock."
    assert fake_bedrock.signed_with[-1] == (KEY_B[0], None)
    assert all(KEY_A[1] not in json.dumps(r.headers) for r in fake_bedrock.requests)


def test_gateway_started_without_aws_credentials_serves_bedrock_once_they_appear(
        tmp_path: Path, fake_bedrock: FakeBedrock, aws_files: Path, start_gateway: Any) -> None:
    fake_bedrock.aws_keys = dict([KEY_A])
    gw = start_gateway(bedrock_config(tmp_path, fake_bedrock))
    with pytest.raises(openai.APIStatusError) as err:
        chat(gw)
    assert "no AWS credentials found" in err.value.message and "looks again" in err.value.message
    assert not fake_bedrock.requests
    aws_files.write_text(profile(KEY_A))
    assert wait_for(lambda: _served(gw), timeout=15) == "Hello from Bedrock."
    assert fake_bedrock.signed_with[-1] == (KEY_A[0], None)


class CredentialsEndpoint(ThreadingHTTPServer):
    """The ECS/EKS container credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`) on loopback."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CredentialsHandler)
        self.answer: dict[str, str] = {}
        self.hits = 0
        self.hold = threading.Event()  # set: answers wait for `release`
        self.waiting = threading.Event()
        self.release = threading.Event()

    def serve(self, key: tuple[str, str], token: str, lifetime: timedelta) -> None:
        expires = (datetime.now(UTC) + lifetime).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.answer = {"AccessKeyId": key[0], "SecretAccessKey": key[1], "Token": token, "Expiration": expires}


class _CredentialsHandler(BaseHTTPRequestHandler):
    server: CredentialsEndpoint

    def do_GET(self) -> None:
        self.server.hits += 1
        if self.server.hold.is_set():
            self.server.waiting.set()
            self.server.release.wait(10)
        body = json.dumps(self.server.answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def credentials_endpoint(aws_files: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CredentialsEndpoint]:
    server = CredentialsEndpoint()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{server.server_port}/creds")
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def test_expiring_container_credentials_are_refreshed_off_the_event_loop(
        tmp_path: Path, fake_bedrock: FakeBedrock, credentials_endpoint: CredentialsEndpoint,
        start_gateway: Any) -> None:
    endpoint = credentials_endpoint
    endpoint.serve(KEY_A, "session-token-a", timedelta(minutes=12))  # within botocore's 15-minute refresh window
    fake_bedrock.aws_keys = dict([KEY_A, KEY_B])
    gw = start_gateway(bedrock_config(tmp_path, fake_bedrock))
    assert chat(gw) == "Hello from Bedrock." and fake_bedrock.signed_with[-1] == (KEY_A[0], "session-token-a")

    endpoint.serve(KEY_B, "session-token-b", timedelta(hours=1))
    endpoint.hold.set()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(chat, gw)
        assert endpoint.waiting.wait(10), "the next request refreshes the credentials"
        with urllib.request.urlopen(gw.url + "/healthz", timeout=3) as resp:  # the loop is free meanwhile
            assert resp.status == 200
        endpoint.release.set()
        assert pending.result(20) == "Hello from Bedrock."
    assert fake_bedrock.signed_with[-1] == (KEY_B[0], "session-token-b")
    hits = endpoint.hits
    assert chat(gw) and chat(gw) and endpoint.hits == hits, "fresh credentials: read from memory, not per request"
    assert fake_bedrock.signed_with[-1] == (KEY_B[0], "session-token-b")


def test_refused_signatures_do_not_look_credentials_up_per_request(
        tmp_path: Path, fake_bedrock: FakeBedrock, credentials_endpoint: CredentialsEndpoint,
        start_gateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """50 requests Bedrock answers 403 (a model the role may not use) cost one credential lookup, not 50;
    a key rotated meanwhile is still picked up once the throttle window has passed."""
    endpoint = credentials_endpoint
    endpoint.serve(KEY_A, "session-token-a", timedelta(hours=1))
    fake_bedrock.aws_keys = {}  # every signature refused: 403
    monkeypatch.setattr(aws, "RENEW_S", 3600.0)  # one window for all 50, however slow the machine
    gw = start_gateway(bedrock_config(tmp_path, fake_bedrock))
    with ThreadPoolExecutor(5) as pool:  # five at a time, so refusals also arrive while a renewal runs
        answers = list(pool.map(lambda _: _served(gw), range(50)))
    assert answers == [None] * 50 and len(fake_bedrock.requests) >= 50
    assert endpoint.hits <= 2, f"{endpoint.hits} credential lookups: the first one and at most one renewal"

    monkeypatch.setattr(aws, "RENEW_S", 0.2)
    endpoint.serve(KEY_B, "session-token-b", timedelta(hours=1))
    fake_bedrock.aws_keys = dict([KEY_B])
    assert wait_for(lambda: _served(gw), timeout=10) == "Hello from Bedrock."
    assert fake_bedrock.signed_with[-1] == (KEY_B[0], "session-token-b")

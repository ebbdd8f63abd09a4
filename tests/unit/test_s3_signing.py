"""A PUT signed with a SHA-256 computed beforehand (off the event loop) carries exactly the headers
botocore's signer produces when it hashes the body itself; a wrong hash would change the signature."""

from __future__ import annotations

import datetime
import hashlib
import os

import pytest
from botocore import auth as botocore_auth
from botocore.credentials import Credentials

from objectstore.s3_direct import DirectS3

FIXED_NOW = datetime.datetime(2026, 12, 4, 2, 0, 0)


@pytest.fixture
async def direct(monkeypatch: pytest.MonkeyPatch) -> DirectS3:
    monkeypatch.setattr(botocore_auth, "get_current_datetime", lambda: FIXED_NOW)
    client = DirectS3(endpoint_url="http://127.0.0.1:9", bucket="keel", region="us-east-1", path_style=True,
                      credentials=Credentials("AKIDEXAMPLE", "secret"), connect_timeout=1, read_timeout=1,
                      max_connections=1)
    yield client
    await client.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/keel/data/a.seg", "https://s3.example.com/keel/data/a.seg"])
async def test_a_given_payload_hash_signs_exactly_as_botocore_hashing_the_body(direct: DirectS3, url: str) -> None:
    body = os.urandom(300 * 1024)
    headers = {"Content-MD5": "bW9jaw==", "If-None-Match": "*"}
    hashed_by_botocore = await direct._signed_headers("PUT", url, body, dict(headers))
    given = await direct._signed_headers("PUT", url, body, dict(headers), hashlib.sha256(body).hexdigest())
    assert given == hashed_by_botocore
    assert given["X-Amz-Content-SHA256"] == hashlib.sha256(body).hexdigest()


async def test_the_given_hash_is_what_gets_signed(direct: DirectS3) -> None:
    url = "http://127.0.0.1:9/keel/data/a.seg"
    body = b"x" * 1024
    right = await direct._signed_headers("PUT", url, body, {}, hashlib.sha256(body).hexdigest())
    wrong = await direct._signed_headers("PUT", url, body, {}, hashlib.sha256(b"other").hexdigest())
    assert wrong["X-Amz-Content-SHA256"] == hashlib.sha256(b"other").hexdigest()
    assert wrong["Authorization"] != right["Authorization"]

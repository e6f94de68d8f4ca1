"""Shared fixtures. Append new fixtures below; keep each small and documented."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_upstream import FakeUpstream


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """The test upstream on a free loopback port (own thread and IOLoop); `.base_url` for OpenAI SDKs."""
    fake = FakeUpstream().start()
    yield fake
    fake.stop()

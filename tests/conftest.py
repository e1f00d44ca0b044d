"""Shared fixtures. Factory fixtures create a thing and clean it up."""

import pytest

from tests.standin import StandIn


@pytest.fixture
def standin():
    """A running LLM stand-in (OpenAI and Anthropic wire protocols) on 127.0.0.1, stopped after the test."""
    with StandIn() as s:
        yield s

"""Wire facts shared by adapters and emulators: one credential, one Retry-After reader, one name registry."""
from __future__ import annotations

import email.utils
import subprocess
import sys
import time

import pytest

from robust_api.errors import ConfigError
from robust_api.providers import CLOUD_PROVIDER_NAMES, PROVIDER_NAMES, provider_class
from robust_api.providers.wire import EMULATOR_KEY, format_retry_after, parse_retry_after, retry_after_from_headers


def test_retry_after_seconds_and_http_dates():
    assert parse_retry_after("3") == 3.0 and parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0  # never negative
    assert parse_retry_after("250", scale=1e-3) == pytest.approx(0.25)
    assert parse_retry_after(None) is None and parse_retry_after("") is None and parse_retry_after("soon") is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 27 <= parse_retry_after(future) <= 31
    assert parse_retry_after(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0
    assert 27 <= parse_retry_after(email.utils.formatdate(time.time() + 30)) <= 31  # "-0000": read as UTC


def test_retry_after_from_headers_any_case_ms_variants_first():
    assert retry_after_from_headers({"Retry-After": "2"}) == 2.0
    assert retry_after_from_headers({"retry-after": "2", "Retry-After-Ms": "500"}) == pytest.approx(0.5)
    assert retry_after_from_headers({"x-ms-retry-after-ms": "1500"}) == pytest.approx(1.5)
    assert retry_after_from_headers({"retry-after-ms": "junk", "retry-after": "4"}) == 4.0  # falls through
    assert retry_after_from_headers({}) is None and retry_after_from_headers(None) is None
    assert retry_after_from_headers({"Content-Type": "application/json"}) is None


def test_emulators_send_what_adapters_read():
    from robust_api.providers.emulator.base import EMULATOR_KEY as emulator_side, EmulatorKnobs

    assert emulator_side is EMULATOR_KEY and EmulatorKnobs().api_key == EMULATOR_KEY
    for seconds in (0, 1, 1.5, 30):
        assert parse_retry_after(format_retry_after(seconds)) == seconds


def test_provider_names_live_in_the_registry():
    assert PROVIDER_NAMES == ("azure", "google", "aws", "clarifai", "local")
    assert CLOUD_PROVIDER_NAMES == ("azure", "google", "aws", "clarifai")
    with pytest.raises(ConfigError, match="unknown provider 'nope'; choose one of azure, google"):
        provider_class("nope")


def test_every_cloud_provider_has_its_emulator_and_local_has_none():
    from robust_api.providers.emulator import _EMULATORS, emulator_class

    assert tuple(_EMULATORS) == CLOUD_PROVIDER_NAMES
    for name in CLOUD_PROVIDER_NAMES:
        assert emulator_class(name).name == name
    with pytest.raises(ConfigError, match="in-process"):
        emulator_class("local")
    with pytest.raises(ConfigError, match="unknown provider"):
        emulator_class("nope")


def test_adapters_load_without_the_emulators_or_the_engine():
    # Importing every adapter (and the registry) must not pull in a test server or the engine's modules.
    code = (
        "import sys, robust_api.providers as p\n"
        "for name in p.PROVIDER_NAMES:\n"
        "    try:\n"
        "        p.provider_class(name)\n"
        "    except Exception:\n"
        "        pass\n"
        "bad = [m for m in sys.modules if m.startswith(('robust_api.providers.emulator', 'robust_api.images',"
        " 'robust_api.engine', 'robust_api.dispatch', 'robust_api.query_logs'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

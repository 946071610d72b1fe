"""Prefect's API clients in one process share one TLS context per CA bundle, still verifying."""

from __future__ import annotations

import shutil
import ssl

import certifi

import flows.sisyphus  # noqa: F401 - installs the shared contexts, as every flow process does
from flows.tls import shared_default_context
from prefect.client.orchestration import PrefectClient, SyncPrefectClient


def _context(client) -> ssl.SSLContext:
    return client._client._transport._pool._ssl_context


def test_clients_share_one_verifying_context():
    a = PrefectClient("https://prefect.example.invalid/api")
    b = PrefectClient("https://prefect.example.invalid/api")
    c = SyncPrefectClient("https://prefect.example.invalid/api")
    ctx = _context(a)
    assert ctx is _context(b) is _context(c)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] > 0          # the bundle was loaded


def test_a_changed_bundle_gets_a_new_context(tmp_path):
    bundle = tmp_path / "ca.pem"
    shutil.copy(certifi.where(), bundle)
    first = shared_default_context(cafile=str(bundle))
    assert shared_default_context(cafile=str(bundle)) is first
    bundle.write_text(bundle.read_text() + "\n")
    assert shared_default_context(cafile=str(bundle)) is not first

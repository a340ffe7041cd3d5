"""No test may reach the network; a hub request is refused, recorded, and reported clearly."""

import socket

import pytest

import conftest
from fvit_core.models import ModelLoadError, load_denoiser


def test_outbound_connections_are_blocked_and_recorded():
    before = len(conftest.NETWORK_ATTEMPTS)
    with socket.socket() as s, pytest.raises(OSError, match="blocked"):
        s.connect(("93.184.216.34", 80))
    assert len(conftest.NETWORK_ATTEMPTS) == before + 1
    del conftest.NETWORK_ATTEMPTS[before:]


def test_loopback_is_allowed():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.socket() as client:
            client.connect(server.getsockname())


def test_hub_denoiser_without_permission_makes_no_request():
    before = len(conftest.NETWORK_ATTEMPTS)
    with pytest.raises(ModelLoadError, match="allow downloads"):
        load_denoiser("google/ddpm-cifar10-32")
    assert len(conftest.NETWORK_ATTEMPTS) == before


def test_hub_denoiser_offline_mode_fails_cleanly_without_a_request():
    before = len(conftest.NETWORK_ATTEMPTS)
    with pytest.raises(ModelLoadError, match="cannot load denoiser"):
        load_denoiser("google/ddpm-cifar10-32", allow_download=True)  # HF_HUB_OFFLINE=1 is honoured
    assert len(conftest.NETWORK_ATTEMPTS) == before

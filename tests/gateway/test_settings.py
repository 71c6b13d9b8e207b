"""Gateway settings that guard operators against a silent misconfiguration."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.gateway.settings import GatewaySettings


def test_the_removed_static_publish_token_is_refused_without_echoing_it() -> None:
    secret = "an-old-static-credential-0123456789abcdef"
    with pytest.raises(ValidationError) as refused:
        GatewaySettings(publish_token=secret)
    assert "GATEWAY_PUBLISH_TOKEN is no longer read" in str(refused.value)
    assert "/v1/auth/token" in str(refused.value)
    assert secret not in str(refused.value)


def test_the_replica_ttl_has_a_floor() -> None:
    assert GatewaySettings(replica_ttl=3).replica_ttl == 3.0
    with pytest.raises(ValidationError, match="replica_ttl"):
        GatewaySettings(replica_ttl=0.5)

"""Clients of the S3 server and Redis built from the settings (no Beam here: the status service uses them too)."""

from __future__ import annotations

from typing import Any, Dict, Optional

from io_connectors import settings as _settings
from io_connectors.settings import RedisSettings, SpacesSettings


def s3_client(settings: Optional[SpacesSettings] = None, max_attempts: int = 8, connect_timeout: float = 10,
              read_timeout: float = 120):
    """boto3 S3 client for Spaces (or any S3 server): bounded retries with jittered backoff built in."""
    import boto3
    from botocore.config import Config

    s = settings or SpacesSettings.from_env()
    return boto3.client(
        "s3", endpoint_url=s.endpoint, region_name=s.region, aws_access_key_id=s.access_key,
        aws_secret_access_key=s.secret_key,
        config=Config(s3={"addressing_style": _settings.get("SPACES_ADDRESSING_STYLE", "path")},
                      retries={"max_attempts": max_attempts, "mode": "standard"}, connect_timeout=connect_timeout,
                      read_timeout=read_timeout,
                      request_checksum_calculation="when_required", response_checksum_validation="when_required"))


def redis_client(settings: Optional[RedisSettings] = None, timeout_s: float = 5.0):
    """A redis-py client from RedisSettings (AUTH with optional ACL user; TLS with REDIS_TLS_CA_FILE)."""
    import redis

    s = settings or RedisSettings.from_env()
    kwargs: Dict[str, Any] = dict(host=s.host, port=s.port, db=s.db, password=s.password or None,
                                  username=s.username or None, socket_timeout=timeout_s,
                                  socket_connect_timeout=timeout_s, health_check_interval=30)
    if s.tls:
        kwargs.update(ssl=True, ssl_cert_reqs="required", ssl_ca_certs=_settings.get("REDIS_TLS_CA_FILE"))
    return redis.Redis(**kwargs)

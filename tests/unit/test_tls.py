"""The local CA: PEM files, 0600, reused while valid, reissued when near expiry, signed by another CA or for
other hosts; a real TLS handshake verifies a service certificate against the CA for localhost and 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509

from devstack import tls

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls") / "tls"
    return d, tls.ensure_tls(d)


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_files_are_pem_private_and_chained(made):
    d, t = made
    assert set(t.services) == set(tls.SERVICES)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for f in d.iterdir():
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    ca = _cert(t.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for sc in t.services.values():
        cert = _cert(sc.cert)
        assert tls.signed_by(cert, ca) and tls._hosts_of(cert) == {"localhost", "127.0.0.1", "::1"}
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
        ks = sc.keystore.read_text()
        assert ks.startswith("-----BEGIN PRIVATE KEY-----") and ks.count("BEGIN CERTIFICATE") == 2  # PKCS#8 + chain


def test_reused_while_valid_and_reissued_near_expiry(made, tmp_path):
    import shutil

    d = tmp_path / "tls"
    shutil.copytree(made[0], d)  # the module's files stay valid for the handshake tests
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    tls.ensure_tls(d)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # idempotent
    later = tls._now() + dt.timedelta(days=tls.CERT_DAYS - tls.RENEW_DAYS + 1)
    tls.ensure_tls(d, now=later)
    assert (d / "ca.crt").read_bytes() == before["ca.crt"]  # the CA has years left
    assert (d / "kafka.crt").read_bytes() != before["kafka.crt"]
    assert _cert(d / "kafka.crt").not_valid_after_utc > later + dt.timedelta(days=300)


def test_a_ca_near_its_end_is_replaced_with_every_certificate(tmp_path):
    d = tmp_path / "tls"
    first = tls.ensure_tls(d, services=("redis",))
    ca1, redis1 = first.ca_cert.read_bytes(), first.services["redis"].cert.read_bytes()
    late = tls._now() + dt.timedelta(days=tls.CA_DAYS - tls.CERT_DAYS)
    again = tls.ensure_tls(d, services=("redis",), now=late)
    assert again.ca_cert.read_bytes() != ca1 and again.services["redis"].cert.read_bytes() != redis1
    assert tls.signed_by(_cert(again.services["redis"].cert), _cert(again.ca_cert))


def test_a_certificate_of_another_ca_or_for_other_hosts_is_reissued(tmp_path):
    d = tmp_path / "tls"
    t = tls.ensure_tls(d, services=("postgres",))
    other_ca, other_key = tls.new_ca()
    cert, key = tls.issue("postgres", other_ca, other_key)
    tls._write(t.services["postgres"].cert, tls._pem_cert(cert))
    tls._write(t.services["postgres"].key, tls._pem_key(key))
    tls.ensure_tls(d, services=("postgres",))
    assert tls.signed_by(_cert(t.services["postgres"].cert), _cert(t.ca_cert))
    tls.ensure_tls(d, services=("postgres",), hosts=("localhost", "127.0.0.1", "::1", "pg.internal"))
    assert "pg.internal" in tls._hosts_of(_cert(t.services["postgres"].cert))


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_a_client_verifies_the_service_against_the_ca(made, host):
    _, t = made
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(t.services["redis"].cert, t.services["redis"].key)
    client_ctx = ssl.create_default_context(cafile=str(t.ca_cert))
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]

        def serve():
            conn, _ = srv.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                s.sendall(b"ok")

        th = threading.Thread(target=serve, daemon=True)
        th.start()
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=host) as s:
                assert s.recv(2) == b"ok" and s.version() in ("TLSv1.2", "TLSv1.3")
        th.join(5)
    bad = ssl.create_default_context()  # the system CAs do not know ours
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]

        def serve_once():
            conn, _ = srv.accept()
            try:
                server_ctx.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                pass

        th = threading.Thread(target=serve_once, daemon=True)
        th.start()
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                bad.wrap_socket(raw, server_hostname=host)
        th.join(5)

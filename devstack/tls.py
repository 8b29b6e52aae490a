"""The local CA and the server certificates of the secured stack, as PEM files (no PKCS12 or JKS).

    python -m devstack.tls [--dir DIR]     # default $DEVSTACK_HOME/tls; prints the paths, never a key

One CA (RSA 3072, 10 years) signs a certificate per service (RSA 2048, 397 days, SAN localhost, 127.0.0.1,
::1, server and client auth, so a Kafka broker can also present it to its controller listener). Every file is
mode 0600 in a 0700 directory; a service that runs as another user (Postgres runs as `postgres`) gets its own
copy owned by that user when the stack switches to TLS.

Idempotent: files are reused while they are valid; a certificate is issued again when it is missing, expires
within `RENEW_DAYS`, was not signed by the current CA, or names other hosts; a CA that nears its end is
replaced and every certificate with it. For Kafka (4.x reads PEM keystores, `ssl.keystore.type=PEM`) a
`<service>.keystore.pem` holds the private key (unencrypted PKCS#8: Kafka requires `ssl.key.password` to be
unset then) followed by the certificate chain; the CA certificate is the truststore (`ssl.truststore.type=PEM`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICES = ("kafka", "postgres", "redis", "s3")
HOSTS = ("localhost", "127.0.0.1", "::1")
CA_DAYS, CERT_DAYS, RENEW_DAYS = 3650, 397, 30
ORG = "iheardAI local stack"


@dataclass(frozen=True)
class ServiceCert:
    service: str
    cert: Path
    key: Path
    keystore: Path  # key + certificate chain, for Kafka's PEM keystore


@dataclass(frozen=True)
class Tls:
    directory: Path
    ca_cert: Path
    ca_key: Path
    services: Dict[str, ServiceCert]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write(path: Path, data: bytes) -> None:
    """Atomically, 0600 from the first byte."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load(cert_path: Path, key_path: Path) -> Optional[Tuple[x509.Certificate, object]]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        return None
    return cert, key


def _fresh(cert: x509.Certificate, now: dt.datetime, renew_days: int = RENEW_DAYS) -> bool:
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - now > dt.timedelta(days=renew_days)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    out = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(out)


def new_ca(now: Optional[dt.datetime] = None, days: int = CA_DAYS) -> Tuple[x509.Certificate, rsa.RSAPrivateKey]:
    now = now or _now()
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    name = _name("iheardAI local CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(service: str, ca_cert: x509.Certificate, ca_key, hosts: Sequence[str] = HOSTS,
          now: Optional[dt.datetime] = None, days: int = CERT_DAYS) -> Tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A server (and client) certificate for `service` on `hosts`, signed by the CA; never beyond the CA."""
    now = now or _now()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (x509.CertificateBuilder().subject_name(_name(service)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    if cert.issuer != ca_cert.subject:
        return False
    try:
        ca_cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                                    cert.signature_hash_algorithm)
    except InvalidSignature:
        return False
    return True


def _hosts_of(cert: x509.Certificate) -> set:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName)) | {str(i) for i in san.get_values_for_type(x509.IPAddress)}


def ensure_tls(directory: Path, services: Sequence[str] = SERVICES, hosts: Sequence[str] = HOSTS,
               now: Optional[dt.datetime] = None) -> Tls:
    """The CA and one certificate per service under `directory`, reused when still good (see the module doc)."""
    now = now or _now()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_cert_path, ca_key_path = directory / "ca.crt", directory / "ca.key"
    loaded = _load(ca_cert_path, ca_key_path)
    # the CA must outlive a whole certificate term, else its certificates would be cut short
    if loaded is None or not _fresh(loaded[0], now, CERT_DAYS + RENEW_DAYS):
        ca_cert, ca_key = new_ca(now)
        _write(ca_key_path, _pem_key(ca_key))
        _write(ca_cert_path, _pem_cert(ca_cert))
    else:
        ca_cert, ca_key = loaded
    out = {}
    for service in services:
        sc = ServiceCert(service, directory / f"{service}.crt", directory / f"{service}.key",
                         directory / f"{service}.keystore.pem")
        got = _load(sc.cert, sc.key)
        if (got is None or not _fresh(got[0], now) or not signed_by(got[0], ca_cert)
                or _hosts_of(got[0]) != set(hosts) or not sc.keystore.exists()):
            cert, key = issue(service, ca_cert, ca_key, hosts, now)
            _write(sc.key, _pem_key(key))
            _write(sc.cert, _pem_cert(cert) + _pem_cert(ca_cert))  # the chain, as servers present it
            _write(sc.keystore, _pem_key(key) + _pem_cert(cert) + _pem_cert(ca_cert))
        out[service] = sc
    return Tls(directory, ca_cert_path, ca_key_path, out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from devstack.config import HOME

    parser = argparse.ArgumentParser(prog="python -m devstack.tls", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=HOME / "tls")
    args = parser.parse_args(argv)
    tls = ensure_tls(args.dir)
    print(f"CA: {tls.ca_cert}")
    for sc in tls.services.values():
        print(f"{sc.service}: {sc.cert} (key {sc.key}, Kafka PEM keystore {sc.keystore})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

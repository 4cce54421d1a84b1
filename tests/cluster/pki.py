"""Certificates and keys for one cluster: a CA, the API server's serving certificate, an admin
client certificate, the API server's client certificate for kubelets, the service-account
signing key, and the aggregation layer's front-proxy CA with the API server's proxy client
certificate. :func:`issue` signs more with the cluster CA (the real node's identity, Kueue's)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVING_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
SERVING_IPS = ("127.0.0.1",)
VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files in one pki directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.root / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.root / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        """Client certificate, O=system:masters."""
        return self.root / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.root / "admin.key"

    @property
    def kubelet_client_cert(self) -> Path:
        """The API server's client certificate towards kubelets (logs, exec, port-forward).
        Not in system:masters: bound to the ClusterRole system:kubelet-api-admin instead."""
        return self.root / "apiserver-kubelet-client.crt"

    @property
    def kubelet_client_key(self) -> Path:
        return self.root / "apiserver-kubelet-client.key"

    @property
    def front_proxy_ca_cert(self) -> Path:
        """Signs only the API server's proxy client certificate: aggregated API servers (Kueue's
        visibility API) trust X-Remote-User headers from a client this CA signed."""
        return self.root / "front-proxy-ca.crt"

    @property
    def front_proxy_ca_key(self) -> Path:
        return self.root / "front-proxy-ca.key"

    @property
    def front_proxy_client_cert(self) -> Path:
        """What the API server presents when it proxies a request to an aggregated API."""
        return self.root / "front-proxy-client.crt"

    @property
    def front_proxy_client_key(self) -> Path:
        return self.root / "front-proxy-client.key"

    @property
    def sa_key(self) -> Path:
        """Signs ServiceAccount tokens (kube-apiserver, kube-controller-manager)."""
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: ExtendedKeyUsageOID | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=not ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"
FRONT_PROXY_CLIENT_USER = "front-proxy-client"


def _load_ca(pki: Pki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{pki.ca_key}: expected an EC key")
    return ca, key


def issue(
    pki: Pki,
    cert_path: Path,
    key_path: Path,
    *,
    common_name: str,
    organizations: tuple[str, ...] = (),
    usage: ExtendedKeyUsageOID = ExtendedKeyUsageOID.CLIENT_AUTH,
    dns_names: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> None:
    """Sign a new key pair with the cluster CA: a client certificate (user ``common_name``,
    groups ``organizations``) or, with ``usage=SERVER_AUTH``, a serving certificate."""
    ca, ca_key = _load_ca(pki)
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    key = _key()
    cert = _cert(x509.Name(attributes), key, ca.subject, ca_key, usage=usage, sans=sans or None)
    _write(cert_path, _pem(cert))
    _write(key_path, _key_pem(key), private=True)


def generate(root: Path) -> Pki:
    """Write a fresh PKI into ``root`` (created if needed) and return its paths."""
    root.mkdir(parents=True, exist_ok=True)
    pki = Pki(root)

    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dcloud-test-ca")])
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    _write(pki.ca_cert, _pem(ca))
    _write(pki.ca_key, _key_pem(ca_key), private=True)

    serving_key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in SERVING_DNS_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVING_IPS]
    serving = _cert(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        serving_key,
        ca_name,
        ca_key,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=sans,
    )
    _write(pki.serving_cert, _pem(serving))
    _write(pki.serving_key, _key_pem(serving_key), private=True)

    admin_key = _key()
    admin = _cert(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "dcloud-admin"),
            ]
        ),
        admin_key,
        ca_name,
        ca_key,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    _write(pki.admin_cert, _pem(admin))
    _write(pki.admin_key, _key_pem(admin_key), private=True)

    issue(pki, pki.kubelet_client_cert, pki.kubelet_client_key, common_name=KUBELET_CLIENT_USER)

    # A CA of its own, as kubeadm does: the requestheader CA must not sign ordinary clients, or
    # any of them could claim to be the API server and send X-Remote-User headers.
    proxy_ca_key = _key()
    proxy_ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dcloud-test-front-proxy-ca")])
    _write(pki.front_proxy_ca_cert, _pem(_cert(proxy_ca_name, proxy_ca_key, proxy_ca_name, proxy_ca_key, ca=True)))
    _write(pki.front_proxy_ca_key, _key_pem(proxy_ca_key), private=True)
    proxy_key = _key()
    proxy_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, FRONT_PROXY_CLIENT_USER)])
    proxy = _cert(proxy_name, proxy_key, proxy_ca_name, proxy_ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    _write(pki.front_proxy_client_cert, _pem(proxy))
    _write(pki.front_proxy_client_key, _key_pem(proxy_key), private=True)

    # RS256 is what every ServiceAccount token consumer understands.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(pki.sa_key, _key_pem(sa_key), private=True)
    _write(
        pki.sa_pub,
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    return pki

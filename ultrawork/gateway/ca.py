"""The gateway's own certificate authority: made once per home, not at every gateway's start.

mitmproxy makes a CA (a 2048-bit RSA key and its certificate) in its ``confdir`` when it finds
none: about 0.12 s of CPU in every gateway's start, while the run's agents are being set up. It is
made once instead, on the host, as mitmproxy makes it (same key size, name and extensions), into
``$ULTRAWORK_HOME/gateway/ca`` (folder 0700, key 0600, the gateway's user). Each gateway gets a copy
in its private, read-only mounted rules folder (which holds the run's keys too, and is removed when
the gateway stops), and its launcher copies it into mitmproxy's ``confdir`` in the container's
private ``/tmp`` before mitmproxy starts.

Nothing trusts this CA: sandboxes reach their routes over plain HTTP to the gateway, and a TLS
tunnel through the forward proxy is checked for its name, never opened. Its key is in the home's
private folder and the gateways' private rules folders only; no sandbox mount may hold it (a sandbox's
mounts are checked against the workspace roots, which the home's gateway folder is not under).
"""

from __future__ import annotations

import datetime
import fcntl
import os
from pathlib import Path

from ultrawork.settings import ultrawork_home

from .image import GATEWAY_UID

CA_FILE = "mitmproxy-ca.pem"          # the key and the certificate, as mitmproxy reads them from its confdir
CA_EXPIRY = datetime.timedelta(days=10 * 365)


def _owner() -> int:
    return GATEWAY_UID if os.geteuid() == 0 else os.getuid()


def _pem() -> bytes:
    """A CA as mitmproxy's ``certs.create_ca`` makes it: the key's PEM, then the certificate's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mitmproxy"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mitmproxy")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().serial_number(x509.random_serial_number()).subject_name(name)
            .issuer_name(name).public_key(key.public_key())
            .not_valid_before(now - datetime.timedelta(days=2)).not_valid_after(now + CA_EXPIRY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(private_key=key, algorithm=hashes.SHA256()))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM)


def _private(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def home_ca() -> Path:
    """The home's gateway CA folder, made on first use (one process at a time)."""
    root = ultrawork_home() / "gateway"
    _private(root)
    folder = root / "ca"
    if (folder / CA_FILE).is_file():
        return folder
    with open(root / ".ca.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _private(folder)
        if not (folder / CA_FILE).is_file():
            owner = _owner()
            partial = folder / f".{CA_FILE}.partial"
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(_pem())
                if os.geteuid() == 0:
                    os.fchown(fh.fileno(), owner, owner)
            os.rename(partial, folder / CA_FILE)
            if os.geteuid() == 0:
                os.chown(folder, owner, owner)      # mounted as a folder: its owner must enter it
    return folder

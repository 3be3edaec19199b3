"""Job signatures: the gateway signs every job it publishes; runners run only jobs it signed.

A bus credential alone must not be a shell on a runner (a `container` job with backend `local` is a bash
command). So the gateway holds an Ed25519 private key, and runners hold only its public key. The signature
covers a context string, the subject and the exact payload bytes, so a signed job can be neither altered nor
moved to another pool's subject:

    signed = b"trainforge-job-v1\\n" + subject + b"\\n" + payload

It travels in the NATS header `Trainforge-Signature` as `ed25519:<base64 of the 64-byte signature>`.

Key files: the private key as PKCS#8 PEM (mode 0600); the public key as the base64 of its 32 raw bytes (a file
holding that, or the value itself), or a PEM SubjectPublicKeyInfo file.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_HEADER = "Trainforge-Signature"
SIGNATURE_SCHEME = "ed25519"
_CONTEXT = b"trainforge-job-v1\n"


class JobSignatureError(ValueError):
    """The job is not signed by the gateway."""


class KeyFileError(ValueError):
    """A job signing or verify key cannot be read."""


def signed_bytes(subject: str, payload: bytes) -> bytes:
    return _CONTEXT + subject.encode() + b"\n" + payload


class JobSigner:
    """Signs jobs with the gateway's private key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def from_file(cls, path: Path) -> JobSigner:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise KeyFileError(f"job signing key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"job signing key {path}: not an Ed25519 private key")
        return cls(key)

    def verifier(self) -> JobVerifier:
        return JobVerifier(self._key.public_key())

    def public_key_b64(self) -> str:
        """The public key as runners take it (`TRAINFORGE_JOB_VERIFY_KEY`)."""
        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def sign(self, subject: str, payload: bytes) -> str:
        """The header value for `payload` published on `subject`."""
        signature = self._key.sign(signed_bytes(subject, payload))
        return f"{SIGNATURE_SCHEME}:{base64.b64encode(signature).decode()}"

    def headers(self, subject: str, payload: bytes) -> dict[str, str]:
        return {SIGNATURE_HEADER: self.sign(subject, payload)}


class JobVerifier:
    """Checks job signatures with the gateway's public key."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key

    @classmethod
    def load(cls, value: str) -> JobVerifier:
        """From the base64 of the raw public key, or from a file holding that (or a PEM public key)."""
        text = value.strip()
        raw = _b64_key(text)
        if raw is None:
            path = Path(text).expanduser()
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise KeyFileError(f"job verify key: neither a base64 Ed25519 public key nor a readable file "
                                   f"({exc.strerror or exc})") from exc
            if data.lstrip().startswith(b"-----BEGIN"):
                try:
                    key = serialization.load_pem_public_key(data)
                except ValueError as exc:
                    raise KeyFileError(f"job verify key {path}: {exc}") from exc
                if not isinstance(key, Ed25519PublicKey):
                    raise KeyFileError(f"job verify key {path}: not an Ed25519 public key")
                return cls(key)
            raw = _b64_key(data.decode(errors="replace").strip())
            if raw is None:
                raise KeyFileError(f"job verify key {path}: not the base64 of a 32-byte Ed25519 public key")
        return cls(Ed25519PublicKey.from_public_bytes(raw))

    def verify(self, subject: str, payload: bytes, headers: Mapping[str, str] | None) -> None:
        """Raise `JobSignatureError` unless `headers` carry a valid signature of `payload` on `subject`."""
        value = (headers or {}).get(SIGNATURE_HEADER)
        if not value:
            raise JobSignatureError(f"no {SIGNATURE_HEADER} header")
        scheme, _, encoded = value.partition(":")
        if scheme != SIGNATURE_SCHEME:
            raise JobSignatureError(f"unknown signature scheme {scheme!r}")
        try:
            signature = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise JobSignatureError("the signature is not base64") from exc
        try:
            self._key.verify(signature, signed_bytes(subject, payload))
        except InvalidSignature:
            raise JobSignatureError(f"bad signature (not the gateway's key, or the job or its subject "
                                    f"{subject} was changed)") from None


def ensure_key_pair(private_path: Path, public_path: Path) -> None:
    """Generate the pair once (private key mode 0600); an existing private key is kept and its public key
    (re)written from it."""
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not private_path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        write_secret(private_path, pem)
    signer = JobSigner.from_file(private_path)
    public = signer.public_key_b64() + "\n"
    if not public_path.exists() or public_path.read_text() != public:
        write_secret(public_path, public.encode(), mode=0o644)


def write_secret(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` atomically, created with `mode` (never readable by others in between)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _b64_key(text: str) -> bytes | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None

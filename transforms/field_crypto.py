"""Field-level encryption: AES-256-GCM envelopes with a key id, a key ring from the environment or a file, and
a command for authorized users to decrypt (and to add or retire keys).

    python -m transforms.field_crypto decrypt --field marketo.leads.delta/email < values.txt
    python -m transforms.field_crypto decrypt --jsonl --table marketo_leads < rows.jsonl
    python -m transforms.field_crypto decrypt --jsonl --topic marketo.leads.delta < events.jsonl
    python -m transforms.field_crypto reencrypt --jsonl --table marketo_leads < rows.jsonl  # to the active key
    python -m transforms.field_crypto add-key --file "$IHEARDAI_FIELD_KEYS_FILE" [--kid ID] [--activate]

Keys come from `IHEARDAI_FIELD_KEYS_FILE` (a file, mode 0600, as a Kubernetes Secret volume mounts it) or
`IHEARDAI_FIELD_KEYS` (the same JSON inline), never from flags, never logged:

    {"active": "k2026a", "keys": {"k2025a": "<base64 of 32 random bytes>", "k2026a": "<...>"}}

The envelope, one printable token (fits TEXT columns, JSON, Parquet and Kafka payloads alike):

    enc:v1:<kid>:<base64url, unpadded, of nonce(12) | ciphertext | tag(16)>[@<domain>]

- `kid` names the key that encrypted it (1-32 of `A-Za-z0-9_-`). Rotation: add a key and make it active; new
  values use it, old values still decrypt with the old key as long as it stays in the ring; `reencrypt`
  moves stored values to the active key before an old key is removed.
- The nonce is 96 random bits per value (os.urandom), so the same value never encrypts to the same token
  (no equality leak; use `pseudonymize` where joins need equality). Random nonces are safe far beyond this
  project's volume (NIST SP 800-38D: up to 2^32 values per key).
- The associated data binds the token to its place: `iheardai-field:v1:<kid>:<topic>/<field>` (plus the
  visible `@domain` for `encrypt_email`). A token moved to another field, another topic, or given another
  key id or domain does not decrypt (InvalidToken), so a reader authorized for one column cannot be tricked
  into revealing another. It does not bind the row: swapping two leads' emails is not detected (that needs
  the record key at decryption time; an attacker able to write the table can do worse anyway).
- `@<domain>` is present only for `encrypt_email`: the address is encrypted whole, its domain stays readable
  (lead scoring sorts corporate from free mail, as `pseudonymize_email` does) and is authenticated.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence, TextIO, Tuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEYS_ENV, KEYS_FILE_ENV = "IHEARDAI_FIELD_KEYS", "IHEARDAI_FIELD_KEYS_FILE"
VERSION = "v1"
PREFIX = f"enc:{VERSION}:"
KEY_BYTES, NONCE_BYTES, TAG_BYTES = 32, 12, 16
_KID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# The payload is base64url: no '@', ':' or space, so a token's end is unambiguous inside free text.
TOKEN_RE = re.compile(r"enc:v1:([A-Za-z0-9_-]{1,32}):([A-Za-z0-9_-]{38,})(?:@([^\s@\"'<>,;]+))?")
_AAD_PREFIX = b"iheardai-field:" + VERSION.encode() + b":"


class KeyRingError(ValueError):
    """The key ring is missing or malformed. Messages name the setting or the key id, never a key."""


class InvalidToken(ValueError):
    """A token that does not decrypt: unknown key id, tampered, truncated, or bound to another field."""


def _b64d(text: str) -> bytes:
    """Canonical unpadded base64url only: the unused low bits of the last character must be zero, so that
    one ciphertext has exactly one token (a changed character never decodes to the same bytes)."""
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64e(raw) != text:
        raise ValueError("non-canonical base64url")
    return raw


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class KeyRing:
    """Keys by id and the id new values are encrypted with (None: a decrypt-only ring)."""

    keys: Mapping[str, bytes]
    active: Optional[str]
    origin: str = "<dict>"

    def __post_init__(self):
        if not self.keys:
            raise KeyRingError(f"field key ring {self.origin}: no keys")
        for kid, key in self.keys.items():
            if not _KID.match(kid):
                raise KeyRingError(f"field key ring {self.origin}: key id {kid!r} must be 1-32 of A-Za-z0-9_-")
            if len(key) != KEY_BYTES:
                raise KeyRingError(f"field key ring {self.origin}: key {kid!r} must be {KEY_BYTES} bytes "
                                   f"(AES-256), not {len(key)}")
        if self.active is not None and self.active not in self.keys:
            raise KeyRingError(f"field key ring {self.origin}: active key {self.active!r} is not in the ring")

    def __repr__(self) -> str:  # never print keys by accident
        return f"KeyRing(kids={sorted(self.keys)}, active={self.active!r}, origin={self.origin!r})"

    @classmethod
    def from_json(cls, text: str, origin: str = "<json>") -> "KeyRing":
        try:
            doc = json.loads(text)
        except ValueError:
            raise KeyRingError(f"field key ring {origin}: not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), dict):
            raise KeyRingError(f"field key ring {origin}: expected {{\"active\": <kid>, \"keys\": {{<kid>: "
                               f"<base64 key>}}}}")
        keys = {}
        for kid, value in doc["keys"].items():
            try:
                keys[str(kid)] = base64.b64decode(str(value), validate=True)
            except (binascii.Error, ValueError):
                raise KeyRingError(f"field key ring {origin}: key {kid!r} is not base64") from None
        return cls(keys, doc.get("active"), origin)

    def to_json(self) -> str:
        return json.dumps({"active": self.active,
                           "keys": {k: base64.b64encode(v).decode() for k, v in sorted(self.keys.items())}},
                          indent=2) + "\n"

    def with_new_key(self, kid: Optional[str] = None, activate: bool = True) -> "KeyRing":
        """A ring with one more random key (the new id defaults to `k<unix time>`)."""
        import time

        kid = kid or f"k{int(time.time())}"
        if kid in self.keys:
            raise KeyRingError(f"field key ring {self.origin}: key id {kid!r} exists already")
        return KeyRing({**self.keys, kid: secrets.token_bytes(KEY_BYTES)}, kid if activate else self.active,
                       self.origin)


def new_ring(kid: str = "k1", origin: str = "<new>") -> KeyRing:
    return KeyRing({kid: secrets.token_bytes(KEY_BYTES)}, kid, origin)


def load_key_ring(environ: Mapping[str, str] = os.environ) -> Optional[KeyRing]:
    """The key ring from `IHEARDAI_FIELD_KEYS_FILE` or `IHEARDAI_FIELD_KEYS` (None when neither is set), like
    transforms.pii.load_hmac_key: on the local stack the worker pool and the submitting process get both
    settings from $DEVSTACK_HOME/devstack.env (devstack/services/worker_pool.py, beam_pipelines/options.py)."""
    if environ.get(KEYS_FILE_ENV):
        path = Path(environ[KEYS_FILE_ENV])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise KeyRingError(f"field key ring: cannot read {KEYS_FILE_ENV}={path} ({e.strerror})") from None
        return KeyRing.from_json(text, origin=str(path))
    if environ.get(KEYS_ENV):
        return KeyRing.from_json(environ[KEYS_ENV], origin=f"${KEYS_ENV}")
    return None


def write_ring_file(ring: KeyRing, path: Path) -> None:
    """Atomically (temp file + rename), mode 0600 from the start: a key never sits in a readable file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(ring.to_json())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def ensure_ring_file(path: Path, kid: str = "k1") -> KeyRing:
    """The ring in `path`, created with one active key if the file does not exist (local stack setup)."""
    path = Path(path)
    if path.exists():
        return KeyRing.from_json(path.read_text(encoding="utf-8"), origin=str(path))
    ring = new_ring(kid, origin=str(path))
    write_ring_file(ring, path)
    return ring


def context(topic: str, field: str) -> str:
    """Where a value lives: `<topic>/<field>`, the associated data a token is bound to."""
    return f"{topic}/{field}"


def _aad(kid: str, ctx: str, domain: Optional[str]) -> bytes:
    return _AAD_PREFIX + kid.encode() + b":" + ctx.encode("utf-8") + (b"@" + domain.encode("utf-8")
                                                                      if domain is not None else b"")


class FieldCipher:
    """Encrypts under the ring's active key and decrypts with any key of the ring (pure; no Beam)."""

    def __init__(self, ring: KeyRing):
        self.ring = ring
        self._aead = {kid: AESGCM(key) for kid, key in ring.keys.items()}

    def encrypt(self, plaintext: str, ctx: str, domain: Optional[str] = None) -> str:
        kid = self.ring.active
        if kid is None:
            raise KeyRingError(f"field key ring {self.ring.origin} has no active key: it can only decrypt")
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[kid].encrypt(nonce, plaintext.encode("utf-8"), _aad(kid, ctx, domain))
        return f"{PREFIX}{kid}:{_b64e(nonce + sealed)}" + (f"@{domain}" if domain is not None else "")

    def encrypt_email(self, address: str, ctx: str) -> str:
        """The whole address encrypted, its (lower-cased) domain readable and authenticated."""
        address = address.strip()
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain:
            return self.encrypt(address, ctx)
        return self.encrypt(address, ctx, domain.lower())

    def decrypt(self, token: str, contexts: Iterable[str]) -> str:
        """The plaintext of one token, which must be bound to one of `contexts` (the field(s) the caller
        knows it read it from). InvalidToken otherwise; the message never holds the plaintext."""
        m = TOKEN_RE.fullmatch(token.strip())
        if not m:
            raise InvalidToken("not an enc:v1 token")
        return self._open(m, tuple(contexts))

    def _open(self, m: "re.Match", contexts: Tuple[str, ...]) -> str:
        kid, payload, domain = m.group(1), m.group(2), m.group(3)
        aead = self._aead.get(kid)
        if aead is None:
            raise InvalidToken(f"key id {kid!r} is not in the field key ring {self.ring.origin}")
        try:
            raw = _b64d(payload)
        except (binascii.Error, ValueError):
            raise InvalidToken("token payload is not base64url") from None
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise InvalidToken("token too short")
        for ctx in contexts:
            try:
                plain = aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(kid, ctx, domain)).decode("utf-8")
            except InvalidTag:
                continue
            return plain
        raise InvalidToken(f"token (key {kid!r}) does not authenticate for {', '.join(contexts) or 'no field'}: "
                           f"tampered, or it belongs to another field")

    def decrypt_text(self, text: str, contexts: Iterable[str]) -> str:
        """`text` with every token in it replaced by its plaintext (a column such as full_name holds
        `<first> <last>`, two tokens)."""
        contexts = tuple(contexts)
        return TOKEN_RE.sub(lambda m: self._open(m, contexts), text)

    def reencrypt_text(self, text: str, contexts: Iterable[str]) -> str:
        """Every token in `text` re-encrypted under the active key, bound to the context it decrypted with."""
        contexts = tuple(contexts)

        def sub(m: "re.Match") -> str:
            for ctx in contexts:
                try:
                    plain = self._open(m, (ctx,))
                except InvalidToken:
                    continue
                return self.encrypt(plain, ctx, m.group(3))
            return self._open(m, contexts)  # raises with the message naming every context
        return TOKEN_RE.sub(sub, text)


def is_encrypted(value: object) -> bool:
    return isinstance(value, str) and PREFIX in value and TOKEN_RE.search(value) is not None


# --- the command -----------------------------------------------------------------------------------------

def _table_contexts(table: str) -> Dict[str, Tuple[str, ...]]:
    from transforms.rows import ENCRYPTED_COLUMNS

    if table not in ENCRYPTED_COLUMNS:
        raise SystemExit(f"--table: no encrypted columns known for {table!r} (known: {sorted(ENCRYPTED_COLUMNS)})")
    topic, columns = ENCRYPTED_COLUMNS[table]
    return {col: tuple(context(topic, f) for f in fields) for col, fields in columns.items()}


def _lines(args, cipher: FieldCipher, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    op = cipher.reencrypt_text if args.command == "reencrypt" else cipher.decrypt_text
    columns = _table_contexts(args.table) if args.table else None
    failed = 0
    for n, line in enumerate(stdin, 1):
        line = line.rstrip("\n")
        if not line.strip():
            stdout.write("\n")
            continue
        try:
            if not args.jsonl:
                stdout.write(op(line, args.field) + "\n")
                continue
            row = json.loads(line)
            if not isinstance(row, dict):
                raise InvalidToken("a JSON line must be an object")
            for key, value in row.items():
                if not is_encrypted(value):
                    continue
                ctxs = columns.get(key, ()) if columns is not None else (context(args.topic, key),)
                row[key] = op(value, ctxs)
            stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        except (InvalidToken, ValueError) as e:
            failed += 1
            stderr.write(f"line {n}: {e}\n")
            stdout.write("\n" if not args.jsonl else "{}\n")  # keep line numbers aligned with the input
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
         stderr: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="python -m transforms.field_crypto", description=__doc__.split("\n")[0],
                                     epilog=f"Keys: ${KEYS_FILE_ENV} (or ${KEYS_ENV}); never a flag.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("decrypt", "stdin tokens -> plaintext"), ("reencrypt", "stdin tokens -> the active key")):
        p = sub.add_parser(name, help=text)
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--field", action="append", metavar="TOPIC/FIELD",
                           help="plain lines: the field the values were read from (repeat for several)")
        where.add_argument("--topic", help="--jsonl: event objects; each key is a field of this topic")
        where.add_argument("--table", help="--jsonl: rows of this Postgres table (e.g. marketo_leads)")
        p.add_argument("--jsonl", action="store_true", help="each line is a JSON object")
    k = sub.add_parser("add-key", help="add a random key to a ring file (created 0600 if missing)")
    k.add_argument("--file", required=True, type=Path)
    k.add_argument("--kid", help="the new key's id (default k<unix time>)")
    k.add_argument("--activate", action="store_true", help="make it the key new values are encrypted with")
    k = sub.add_parser("remove-key", help="retire a key from a ring file (after `reencrypt`)")
    k.add_argument("--file", required=True, type=Path)
    k.add_argument("--kid", required=True)
    args = parser.parse_args(argv)

    try:
        if args.command == "add-key":
            ring = (KeyRing.from_json(args.file.read_text(), str(args.file)) if args.file.exists()
                    else None)
            ring = ring.with_new_key(args.kid, args.activate or ring.active is None) if ring else \
                new_ring(args.kid or "k1", str(args.file))
            write_ring_file(ring, args.file)
            stdout.write(f"{args.file}: keys {sorted(ring.keys)}, active {ring.active}\n")
            return 0
        if args.command == "remove-key":
            ring = KeyRing.from_json(args.file.read_text(), str(args.file))
            if args.kid == ring.active:
                raise KeyRingError(f"{args.kid!r} is the active key: activate another one first")
            if args.kid not in ring.keys:
                raise KeyRingError(f"no key {args.kid!r} in {args.file}")
            ring = KeyRing({k: v for k, v in ring.keys.items() if k != args.kid}, ring.active, ring.origin)
            write_ring_file(ring, args.file)
            stdout.write(f"{args.file}: keys {sorted(ring.keys)}, active {ring.active}\n")
            return 0
        if (args.topic or args.table) and not args.jsonl:
            parser.error("--topic and --table read JSON lines: add --jsonl")
        if args.field and args.jsonl:
            parser.error("--field reads plain lines; use --topic or --table with --jsonl")
        ring = load_key_ring()
        if ring is None:
            raise KeyRingError(f"no field key ring: set {KEYS_FILE_ENV} (or {KEYS_ENV})")
        if args.command == "reencrypt" and ring.active is None:
            raise KeyRingError(f"field key ring {ring.origin} has no active key to re-encrypt to")
        return _lines(args, FieldCipher(ring), stdin, stdout, stderr)
    except KeyRingError as e:
        stderr.write(f"error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())

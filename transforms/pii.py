"""PII redaction: pure detectors and replacers, a per-field policy from config, and the `RedactPii` composite.

Detected in free text (agent responses, user messages, element text, URLs with their query strings,
referrers, nested JSON): email addresses (RFC 5322 local parts, quoted or not, internationalized and punycode
domains), phone numbers as people write them (international, national and short local formats, extensions;
libphonenumber's POSSIBLE check, `phonenumbers`, over the policy's regions, plus shape and context rules),
IPv4 and IPv6 addresses (validated by `ipaddress`, IPv4-mapped and -embedded forms whole), payment card
numbers (Luhn-checked, 12-19 digits with the ISO/IEC 7812 issuer ranges in use), US SSNs (valid
area/group/serial ranges; undelimited only next to an SSN keyword) and IBANs (every country of the IBAN
registry as `schwifty` ships it, length and mod-97 checksum; an IBAN-shaped run whose check digits fail is
left whole, never cut into cards or phones). Person names are
replaced where a field is known to hold one. Each finding becomes a token such as `<EMAIL>`; identifier fields
that must stay joinable get a keyed pseudonym (HMAC-SHA256; key from `PII_HMAC_KEY` or the file named by
`PII_HMAC_KEY_FILE`, never logged or pickled into the pipeline graph). Fields whose value the business needs
back get `encrypt` (AES-256-GCM envelope with a key id, bound to its topic and field) or `encrypt_email` (the
same, the domain left readable): `transforms/field_crypto.py`, keys from `IHEARDAI_FIELD_KEYS_FILE` or
`IHEARDAI_FIELD_KEYS`, decrypted by `python -m transforms.field_crypto decrypt` for authorized users.

The per-field policy lives in `config/pii_policy.json` (or the file named by `PII_POLICY_FILE`); it is read
and checked when the pipeline is built. It fails closed: every topic a pipeline redacts needs an entry
(`{}` when it holds no PII), else building the pipeline raises ValueError naming the topic and the file.
`transformation_metadata()["pii"]` records the kinds and counts redacted and which fields were
pseudonymized, never the values.

Quality, on the project's labelled set and on the public set built from Faker, libphonenumber, schwifty and
python-email-validator (recall and over-redaction per kind and source): `python benchmarks/pii_quality.py`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Union
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import apache_beam as beam
import phonenumbers
from schwifty import registry as iban_registry
from schwifty.exceptions import InvalidCountryCode
from apache_beam.metrics import Metrics
from pydantic import BaseModel

from events.contracts import EventModel
from events.topics import CONTRACTS
from transforms.field_crypto import KEYS_ENV as FIELD_KEYS_ENV, KEYS_FILE_ENV as FIELD_KEYS_FILE_ENV
from transforms.field_crypto import FieldCipher, KeyRing, context as field_context, load_key_ring
from events.metrics import step_namespace
from events.dead_letters import DeadLetter, ErrorKind, Tags

EMAIL, PHONE, IP, CARD, SSN, IBAN, PERSON = "email", "phone", "ip_address", "credit_card", "us_ssn", "iban", "person"
KINDS = (EMAIL, PHONE, IP, CARD, SSN, IBAN, PERSON)
TOKENS = {k: f"<{k.upper()}>" for k in KINDS}
ACTIONS = ("keep", "scan", "url", "person", "phone", "pseudonymize", "pseudonymize_email", "encrypt", "encrypt_email",
           "field_changes", "drop")
ENCRYPT_ACTIONS = ("encrypt", "encrypt_email")  # transforms/field_crypto.py: AES-256-GCM, key ring from env/file
DEFAULT_POLICY_FILE = Path(__file__).resolve().parent.parent / "config" / "pii_policy.json"
KEY_ENV, KEY_FILE_ENV, POLICY_ENV = "PII_HMAC_KEY", "PII_HMAC_KEY_FILE", "PII_POLICY_FILE"
MIN_KEY_BYTES = 16

Counts = Dict[str, int]

# --- detectors --------------------------------------------------------------------------------------------

_TRIGGER = re.compile(r"[\d@:]")  # every detector needs a digit, an '@' or a ':' (IPv6 such as fe80::a)
_DIGIT = re.compile(r"\d")
# Cards, SSNs and phones all need 6+ digits within a short run; texts without one skip those detectors.
_DIGIT_RUN = re.compile(r"\d[\d\-. ()/+]{4,}\d")

# Emails: RFC 5322 atext (and quoted local parts), Unicode letters (SMTPUTF8, IDN), punycode TLDs. `_M` adds
# the combining marks of Indic and Thai scripts, which `\w` leaves out.
_M = "\u0300-\u036f\u0900-\u0e7f"
_ATEXT = rf"[\w{_M}!#$%&'*+\-/=?^`{{|}}~\uff01-\uff5e]"  # and the full-width forms CJK keyboards type
_EMAIL_RE = re.compile(
    rf"(?:\"(?:[^\"\\\n]|\\.){{1,64}}\"|{_ATEXT}(?:(?:{_ATEXT}|\.(?!\.)){{0,126}}{_ATEXT})?)"
    rf"@(?:[^\W_](?:[\w{_M}\-]{{0,61}}[\w{_M}])?\.)+(?:[^\W\d_][\w{_M}]{{1,62}}|xn--[A-Za-z0-9\-]{{1,59}})"
    rf"(?![\w{_M}\-]|\.[^\W_])")
# A key or a path glued before a local part ("email=jane@...", "/u/jane@..."): not part of the address.
_EMAIL_KEY = re.compile(r"(?i)^(?:.*[&?;])?(?:e-?mail|mail|to|from|cc|bcc|user(?:name)?|login|address|recipient|"
                        r"sender|reply-to|contact|account|id|q|query)=")

# Cards: Luhn-checked, with the lengths and first digits (ISO/IEC 7812 issuer ranges) that cards use:
# Maestro 12-19 digits (50, 56-69, 0604), Visa 13, Diners 14, UATP (1), JCB (1800, 2131) and Amex 15, and 16-19 digits
# for issuers 2-6, UnionPay/RuPay 81-82, UzCard 8600, GPN 1946, Troy 9792 and Humo 9860.
_CARD_RE = re.compile(r"(?<![\d\-+])\d(?:[ \-]?\d){11,18}(?!\d)")
_AFTER_COUNTRY_CODE = re.compile(r"\+\d{1,3}[ \-]?\Z")
_CARD_EXCLUDE = re.compile(r"(?i)\b(?:ean|ean-?13|upc|gtin|isbn|barcode|sku|article|art|item|tracking|order|invoice|"
                           r"ref|reference|serial|part|imei|ticket)\b\s*(?:no\.?|number|#|code)?\s*[:#]?\s*\Z")
# Not after a country code: "+591 800 17 1234" is a phone.
_SSN_RE = re.compile(r"(?<![\d\-.+])(?<!\+\d )(?<!\+\d\d )(?<!\+\d\d\d )(\d{3})([\- .])(\d{2})\2(\d{4})(?![\d\-]|\.\d)")
_SSN_BARE_RE = re.compile(r"(?<![\d\-])(\d{3})(\d{2})(\d{4})(?!\d)")
_SSN_WORD = re.compile(r"(?i)\b(?:ssn|ss#|social\s+security|taxpayer|tin)\b")
_SSN_CONTEXT = re.compile(r"(?i)\b(?:ssn|ss#|social\s+security|taxpayer|tin)\b[^\n]{0,30}\Z")
_IBAN_RE = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{2}\d{2}(?:[ \-]?[A-Za-z0-9]){11,34})")
_IPV4_RE = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                      r"(?!\.?\d|\w)")
_IPV6_RE = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{2,39}"
                      r"(?:(?<=:)(?:\d{1,3}\.){3}\d{1,3})?(?:%[\w.]+)?(?![\w.]*\w)")


def _iban_specs() -> Dict[str, Tuple[int, "re.Pattern"]]:
    """{country: (IBAN length, BBAN structure)} for every country in schwifty's copy of the SWIFT IBAN registry
    (and the "aspirational" countries that publish IBANs outside it)."""
    out = {}
    for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        for b in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            try:
                spec = iban_registry.get_iban_spec(a + b)
            except InvalidCountryCode:
                continue
            out[a + b] = (spec.iban_length, spec.regex)
    return out


IBAN_SPECS = _iban_specs()
IBAN_LENGTHS = {c: length for c, (length, _) in IBAN_SPECS.items()}


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check: double every second digit from the right, sum digits, divisible by 10."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def gtin_valid(digits: str) -> bool:
    """The GS1 check digit of EAN/UPC/GTIN codes: weights 3 and 1 alternating from the right, sum % 10 == 0."""
    return sum((ord(c) - 48) * (3 if i % 2 else 1) for i, c in enumerate(reversed(digits))) % 10 == 0


def iban_valid(compact: str) -> bool:
    """Country length from the registry and ISO 7064 mod-97-10 == 1 (letters A=10 .. Z=35)."""
    compact = compact.upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    try:
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
    except ValueError:
        return False


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000; not one repeated digit."""
    whole = area + group + serial
    return (area != "000" and area != "666" and area[0] != "9" and group != "00" and serial != "0000"
            and len(set(whole)) > 1)


def card_issuer_ok(digits: str) -> bool:
    """Length and first digits of a payment card number (ISO/IEC 7812 issuer ranges in use)."""
    n, two = len(digits), digits[:2]
    maestro = two == "50" or "56" <= two <= "69" or digits[:4] == "0604"
    if n == 12:
        return maestro
    if n == 13:
        return digits[0] == "4" or maestro
    if n == 14:
        return digits[0] == "3" or maestro
    if n == 15:
        return digits[0] in "13" or digits[:4] == "2131" or maestro
    return n <= 19 and (digits[0] in "23456" or two in ("81", "82") or digits[:4] in ("8600", "1946", "9792", "9860"))


_SEP = re.compile(r"[ \-]")


def _card_shape_ok(span: str) -> bool:
    """Undelimited, or one separator kind between groups of 3-6 digits (4-4-4-4, 4-6-5, 4-4-4-4-3)."""
    seps = set(_SEP.findall(span))
    return not seps or (len(seps) == 1 and all(3 <= len(g) <= 6 for g in _SEP.split(span)))


def _card_in(text: str) -> Optional[Tuple[int, int]]:
    """(start, end) of the first card number inside a digit run, or None. The run may hold a neighbour number
    before or after the card (a quantity, a CVV, a year): try each group start, and the common lengths
    ending on a group boundary. An undelimited 13-digit run that also passes the GS1 check is taken for an
    EAN-13 barcode (Visa's 13-digit numbers are no longer issued)."""
    positions = [i for i, c in enumerate(text) if c.isdigit()]
    starts = [0] + [i + 1 for i, c in enumerate(text) if c in " -" and i + 1 < len(text) and text[i + 1].isdigit()]
    for start in starts:
        first = positions.index(start)
        whole = len(positions) - first  # the rest of the run first: a 19-digit card is not a 16 and a CVV
        for n in ((whole,) if 12 <= whole <= 19 else ()) + (16, 15, 19, 18, 17, 14, 13, 12):
            if first + n > len(positions):
                continue
            end = positions[first + n - 1] + 1
            if end != len(text) and text[end] not in " -":
                continue
            digits = "".join(text[i] for i in positions[first:first + n])
            if card_issuer_ok(digits) and luhn_valid(digits) and _card_shape_ok(text[start:end]):
                if n == 13 and end - start == n and gtin_valid(digits):
                    continue
                return start, end
    return None


def _redact_cards(text: str, counts: Counts) -> str:
    pieces, pos, last = [], 0, 0
    while True:
        m = _CARD_RE.search(text, pos)
        if m is None:
            break
        if _AFTER_COUNTRY_CODE.search(text, max(0, m.start() - 6), m.start()):
            pos = m.end()  # "+43 6483 79611 144": an international phone number, no group of it a card
            continue
        found = _card_in(m.group())
        if found is None:  # resume at the run's next group: the card may start there and run past m.end()
            nxt = _SEP.search(text, m.start(), m.end())
            pos = nxt.end() if nxt else m.end()
            continue
        start, end = m.start() + found[0], m.start() + found[1]
        if end - start < 15 and _CARD_EXCLUDE.search(text, max(0, start - 30), start):
            pos = end  # "EAN 4006381333931", "order 5018 1234 5678": a short code after a business keyword
            continue
        pieces += [text[last:start], TOKENS[CARD]]
        counts[CARD] = counts.get(CARD, 0) + 1
        pos = last = end
    return "".join(pieces) + text[last:] if pieces else text


def _iban_at(text: str, m: "re.Match") -> Tuple[Optional[int], bool]:
    """(end of a valid IBAN starting at the match or None, whether the match has an IBAN's shape: a registry
    country, its length and its BBAN structure). The greedy match may run into the next word: it is cut at
    the country's length, then checked."""
    spec = IBAN_SPECS.get(text[m.start():m.start() + 2].upper())
    if spec is None:
        return None, False
    length, structure = spec
    alnum = [i for i in range(m.start(), m.end()) if text[i].isalnum()]
    if len(alnum) < length:
        return None, False
    end = alnum[length - 1] + 1
    if end < len(text) and text[end].isalnum():
        return None, False  # the run goes on without a separator: longer than an IBAN of that country
    compact = "".join(text[i] for i in alnum[:length])
    if iban_valid(compact):
        return end, True
    return None, structure.match(compact[4:].upper()) is not None and compact[2:4].isdigit()


def _redact_ibans(text: str, counts: Counts, mask: "_Mask") -> str:
    """Scan left to right, resuming right after each IBAN found (a greedy match may have swallowed the next
    one), or one character after a candidate that fails. A candidate with an IBAN's shape whose check digits
    fail is masked: no other detector may take its digits for a card or a phone."""
    pieces, pos, last = [], 0, 0
    while True:
        m = _IBAN_RE.search(text, pos)
        if m is None:
            break
        end, shaped = _iban_at(text, m)
        if end is None:
            if shaped and mask.ok:
                alnum = [i for i in range(m.start(), m.end()) if text[i].isalnum()]
                cut = alnum[IBAN_LENGTHS[text[m.start():m.start() + 2].upper()] - 1] + 1
                pieces += [text[last:m.start()], mask.hide(text[m.start():cut])]
                pos = last = cut
            else:
                pos = m.start() + 1
            continue
        pieces += [text[last:m.start()], TOKENS[IBAN]]
        counts[IBAN] = counts.get(IBAN, 0) + 1
        pos = last = end
    return "".join(pieces) + text[last:] if pieces else text


class _Mask:
    """Spans that later detectors must not see (an IBAN that fails its check digits), each replaced by one
    private-use character until the end of redact_text. Off for texts that already hold such characters."""

    _CHAR = re.compile("[\ue000-\uf8ff]")

    def __init__(self, text: str):
        self.ok = self._CHAR.search(text) is None
        self.spans: list = []

    def hide(self, span: str) -> str:
        self.spans.append(span)
        return chr(0xE000 + len(self.spans) - 1)

    def restore(self, text: str) -> str:
        return self._CHAR.sub(lambda m: self.spans[ord(m.group()) - 0xE000], text) if self.spans else text


def _ssn_sub(m: "re.Match", counts: Counts) -> str:
    if not ssn_valid(m.group(1), m.group(3), m.group(4)):
        return m.group()
    counts[SSN] = counts.get(SSN, 0) + 1
    return TOKENS[SSN]


def _redact_bare_ssns(text: str, counts: Counts) -> str:
    def sub(m):
        if ssn_valid(m.group(1), m.group(2), m.group(3)) and _SSN_CONTEXT.search(text, 0, m.start()):
            counts[SSN] = counts.get(SSN, 0) + 1
            return TOKENS[SSN]
        return m.group()
    return _SSN_BARE_RE.sub(sub, text)


def _ip_sub(m: "re.Match", counts: Counts, v6: bool) -> str:
    cand = m.group()
    try:
        (ipaddress.IPv6Address if v6 else ipaddress.IPv4Address)(cand.split("%")[0])
    except ValueError:
        return cand
    counts[IP] = counts.get(IP, 0) + 1
    return TOKENS[IP]


# --- phones -----------------------------------------------------------------------------------------------
# A candidate is a run of digits and the separators people put in phone numbers, with an optional leading '+'
# or '(' and an extension. It is a phone when nothing glues it to a longer token, no business keyword stands
# before it and no unit or currency after it, its shape is not a date, an amount, a coordinate, an IP address,
# an SSN, an ISBN or a postcode, and either its shape is strong (international prefix, area code in brackets,
# a trunk 0, grouped digits in which libphonenumber finds a POSSIBLE number for one of the policy regions) or
# something vouches for it: a phone word shortly before or a label right after ("Tel. ", "-Fax"), a phone just
# before it in the same list, or, for a 9-12 digit run, a line of its own (a contact block).

_PHONE_RUN = re.compile(r"(?:\(\+?|\+ ?)?\d[\d\-. /()\u00a0]*\d(?:\s?(?:x|ext\.?|extn\.?|extension|#)\s?\d{1,6}\b)?",
                        re.I)
_PHONE_SPLIT = re.compile(r" +/ *| {2,}| (?=\+)")  # "a / b", "a  b", "a +44 ...": two numbers in one run
_PHONE_EXT = re.compile(r"(?i)\s?(?:x|ext\.?|extn\.?|extension|#)\s?\d{1,6}\Z")
_PHONE_EXCLUDE = re.compile(
    r"(?i)(?:#|\b(?:order|invoice|inv|ticket|tracking|ref|reference|sku|po|case|id|serial|sn|s/n|isbn|issn|ean|upc|"
    r"gtin|barcode|version|build|release|account|acct|iban|bic|swift|routing|sort\s+code|zip|postcode|postal\s+code|"
    r"plz|cep|confirmation|booking|reservation|art|article|item|part|model|lot|batch|policy|claim|contract|"
    r"customer|member|vat|tax|ein|passport|licen[cs]e|registration|imei|pin|otp|transaction|txn|receipt|"
    r"shipment|parcel|quote|rma|job|incident|room|flight|seat|vin|code)"
    r"(?:\s*(?:number|no\.?|nr\.?|num|id|code|#))?)\s*[:#.]?\s*\Z")
_PHONE_WORDS = (r"call|phone|phones|tel|tél|tel[eé]fon[oe]?|telephone|t[eé]l[eé]phone|mobile?|mob|m[oó]vil|cell|"
                r"cellular|handy|portable|sms|whatsapp|fax|telefax|contact|reach|dial|number|"
                r"desk|direct|office|hotline|helpline|switchboard|landline|ph|tlf|tlph|puhelin|numer|"
                r"telefone|celular|電話|携帯|전화|휴대폰")
# A phone word shortly before the number, with no digit and no sentence end between ("Tel. ", "reach Jane at ").
_PHONE_CONTEXT = re.compile(rf"(?i)(?:\b(?:{_PHONE_WORDS})\b|\b(?:tel|tél|mob|ph|tlf|tlph|fax)\.)"
                            rf"(?:(?:(?![.!?;]\s)[^\n\d]){{0,30}}|\W{{0,3}}\n\s*)\Z")
_PHONE_LABEL_AFTER = re.compile(r"(?i)-(?:fax|tel|phone|mobile|cell|office|home|work|direct|desk|main)\b")
_PHONE_LABEL_NEXT = re.compile(r"(?i) ?[(\-]? ?(?:fax|tel|phone|mobile|cell|office|home|work|direct|desk|main)\b")
_PHONE_UNIT_AFTER = re.compile(r"(?i)\s?(?:€|eur\b|euros?\b|usd\b|\$|chf\b|gbp\b|£|zł|pln\b|kr\b|sek\b|nok\b|dkk\b|"
                               r"yen\b|¥|%|km\b|kg\b|units?\b|users?\b|seats?\b|pcs\b|items?\b|copies\b|people\b|"
                               r"dollars?\b|bytes\b|[kmgt]b\b)")
_LINE_BEFORE = re.compile(r"(?:^|\n)[^\w\n]*(?:[^\W\d_]+\.?[^\w\n]*){0,2}\Z")  # line start, maybe a label
_LINE_AFTER = re.compile(r"[^\w\n]*(?:\(?[^\W\d_]+\)?[^\w\n]*)?(?:\n|\Z)")
_LIST_GAP = re.compile(r"(?i)\s*(?:[,;/|&]|or|and|oder|ou|o|y|et|und|of)?\s*\Z")
_IPV4_SHAPE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}\Z")
_SSN_SHAPE = re.compile(r"\d{3}([\- ])\d{2}\1\d{4}\Z")
_POSTCODE_SHAPE = re.compile(r"(?:\d{5}-\d{3,4}|\d{4}-\d{3})\Z")  # ZIP+4, Brazil's CEP, Portugal's código postal
_POSTCODE_TAIL = re.compile(r" (?:\d\d-\d{3}|\d{4}-\d{3}|\d{5}-\d{3,4})\Z")
_THOUSANDS_SHAPE = re.compile(r"[1-9]\d{0,2}([ .'\u00a0])\d{3}(?:\1\d{3})*\Z")
_DATE_SHAPE = re.compile(r"(?:(?:19|20)\d\d([\-./])\d{1,2}\1\d{1,2}|\d{1,2}([\-./])\d{1,2}\2(?:19|20)\d\d)(?!\d)|"
                         r"(?:\d{1,2}([\-./])\d{1,2}\3\d\d|(?:19|20)\d\d[\-/](?:19|20)\d\d)\Z")  # may lead a run
_DATE_INSIDE = re.compile(  # an ISO, European or US date, a year range or a yyyymmdd date anywhere in the run
    r"(?<!\d)(?:(?:19|20)\d\d([\-./])(?:0?[1-9]|1[0-2])\1(?:0?[1-9]|[12]\d|3[01])|"
    r"(?:0?[1-9]|[12]\d|3[01])([\-./])(?:0?[1-9]|1[0-2])\2(?:19|20)\d\d|"
    r"(?:0?[1-9]|1[0-2])([\-./])(?:0?[1-9]|[12]\d|3[01])\3(?:19|20)\d\d|(?:19|20)\d\d[\-/](?:19|20)\d\d|"
    r"(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))(?!\d)")
_DATE_RANGE = re.compile(r"(?<!\d)\d{1,2}\.\d{1,2}\.?-\d{1,2}\.\d{1,2}(?!\d)")  # "19.10.-26.11."
_DECIMAL_SHAPE = re.compile(r"\d+[.]\d+\Z")
_COORDINATE_SHAPE = re.compile(r"\d{1,3}[.]\d{5,}\Z")  # "48.856613", "-106.720671"
_GROUP = re.compile(r"\d+")


def _phone_possible(number: str, regions: Tuple[str, ...]) -> bool:
    """libphonenumber finds a POSSIBLE number (country code known, length possible) in the candidate, read as
    international ('+', '00', '011') or as national in one of the regions."""
    intl = None
    digits = number.lstrip("(")
    if digits.startswith("+"):
        intl = digits
    elif digits.startswith(("00", "011")) and not digits.startswith("000"):
        intl = "+" + (digits[3:] if digits.startswith("011") else digits[2:]).lstrip(" -.")
    try:
        if intl is not None:
            return phonenumbers.is_possible_number(phonenumbers.parse(intl, None))
        for region in regions:
            if phonenumbers.is_possible_number(phonenumbers.parse(number, region)):
                return True
    except phonenumbers.NumberParseException:
        pass
    return False


def _phone_verdict(text: str, start: int, end: int, regions: Tuple[str, ...], vouched: bool) -> bool:
    """Whether text[start:end] (a candidate without glue or business keyword) is a phone number."""
    raw = text[start:end]
    ext = _PHONE_EXT.search(raw)
    base = raw[:ext.start()] if ext else raw
    body = base.replace("(0)", "")
    n = len(_DIGIT.findall(body))
    if n < 6 or n > 15 or _IPV4_SHAPE.match(base) or _SSN_SHAPE.match(base) or _DATE_SHAPE.match(base) or \
            _COORDINATE_SHAPE.match(base) or _DATE_RANGE.search(base):
        return False
    groups = _GROUP.findall(body)
    intl = base[0] == "+" or base.startswith("(+")
    bracketed = base[0] == "(" and ")" in base
    if not (intl or vouched) and any(len(g) == 1 for g in groups[1:]):
        return False  # "0-306-40615-2", "978-3-16-148410-0": ISBNs hold single-digit groups after the first
    if vouched:
        return n >= 6
    if n < 7:
        return False
    if intl:
        return True  # '+' and 7+ digits: written as a phone number even when the country code is unknown
    if _DATE_INSIDE.search(base):
        return False  # "2028/09/13 51", "19723 2025/2026": a date or a year range beside another number
    if len(groups) == 1 and not bracketed and 9 <= n <= 12 and _LINE_BEFORE.search(text, 0, start) and \
            _LINE_AFTER.match(text, end):  # alone on its line (a contact block): a trunk 0 or a NANP number
        return base[0] == "0" or (n == 10 and base[0] in "23456789") or (n == 11 and base[0] == "1")
    if len(groups) > 1 and (max(len(g) for g in groups) > 10 or _POSTCODE_TAIL.search(base)):
        return False  # "7126900197770 23", "159 08-489": a long code, or a street number beside a postcode
    if _DECIMAL_SHAPE.match(base) or ("." in base and (" " in base or "-" in base)):
        return False  # "2753.7621", "2023-09-22 754.40": a decimal number, or a date beside an amount
    if len(groups) == 1 and not bracketed:
        return False  # an undelimited digit run is a phone only with a keyword
    if _THOUSANDS_SHAPE.match(base) or _POSTCODE_SHAPE.match(base):
        return False  # "4 512 300", "1.234.567", "94105-1234": amounts and postcodes unless a keyword says so
    if re.match(r"(?:19|20)\d\d[\-/]", base) and len(groups) == 2:
        return False  # "2024-001234": a year and a serial
    return bracketed or base.startswith("0") or _phone_possible(base, regions)


def _redact_phones(text: str, regions: Tuple[str, ...], counts: Counts) -> str:
    pieces, last, prev_end = [], 0, -1
    for m in _PHONE_RUN.finditer(text):
        run_start = m.start()
        for part in _PHONE_SPLIT.split(m.group()):
            start = text.index(part, run_start)
            run_start = start + len(part)
            end = start + len(part)
            if part.startswith("(") and ")" not in part:
                start += 1  # "(4155550132": the bracket is the sentence's
            if part.startswith("(") and ")" not in part[1:]:
                part = part[1:]
            if not part or not part[-1].isdigit() and not _PHONE_EXT.search(part):
                continue
            before = text[max(0, start - 40):start]
            prev = text[start - 1] if start else ""
            prev2 = text[start - 2] if start > 1 else ""
            if prev and (prev.isalnum() or prev in "_$€£¥#/\\@" or (prev in "-.," and prev2.isalnum()) or
                         (prev == ":" and prev2.isdigit())):
                continue  # glued to a word, an amount, a time or a path: "SKU-4155550132", "$42,164.21", "16:50"
            nxt = text[end:end + 2]
            if nxt and (nxt[0].isalnum() or nxt[0] in "_%€$£" or (nxt[0] in ".,:/-'\u202f" and nxt[1:2].isdigit())):
                continue  # part of a longer token
            if nxt[:1] == "-" and nxt[1:2].isalpha() and not _PHONE_LABEL_AFTER.match(text, end):
                continue  # "...-AB": a code; "...-Fax" is a label
            if _PHONE_EXCLUDE.search(before) or _PHONE_UNIT_AFTER.match(text, end):
                continue  # "order #4155552671", "invoice no. 2025550143", "4 512 300 EUR"
            gap = text[prev_end:start] if prev_end >= 0 else "\n"  # "a, b", "a or b": a list after a phone
            vouched = bool(_PHONE_CONTEXT.search(before) or _PHONE_LABEL_NEXT.match(text, end) or
                           ("\n" not in gap and _LIST_GAP.match(gap)))
            if not _phone_verdict(text, start, end, regions, vouched):
                continue
            pieces += [text[last:start], TOKENS[PHONE]]
            counts[PHONE] = counts.get(PHONE, 0) + 1
            last = prev_end = end
    return "".join(pieces) + text[last:] if pieces else text


def _redact_emails(text: str, counts: Counts) -> str:
    def sub(m: "re.Match") -> str:
        found = m.group()
        local = found[:found.rindex("@")]
        keep = ""
        key = _EMAIL_KEY.match(local)
        if key:  # "email=jane@acme.com": the key stays
            keep = found[:key.end()]
        elif local.startswith("/") or "//" in local:  # "https://x.io/u/jane@acme.com": the path stays
            keep = found[:local.rindex("/") + 1]
        if keep and len(keep) >= len(local):
            return found
        counts[EMAIL] = counts.get(EMAIL, 0) + 1
        return keep + TOKENS[EMAIL]
    return _EMAIL_RE.sub(sub, text)


def redact_text(text: str, regions: Tuple[str, ...] = ("US",), counts: Optional[Counts] = None
                ) -> Tuple[str, Counts]:
    """Replace every PII finding in free text by its token; return (text, {kind: count}).

    Order matters: emails first (they may hold digits), then IBANs, IPv6 (which may end in an IPv4 address),
    IPv4, cards and SSNs (specific shapes with checksums or ranges), phones last (the broadest matcher, run
    only when a 6+ digit run exists). An IBAN-shaped run whose check digits fail is hidden from the card and
    phone detectors and comes out as it went in.
    """
    counts = {} if counts is None else counts
    if not text or not _TRIGGER.search(text):
        return text, counts
    if "@" in text:
        text = _redact_emails(text, counts)
    if ":" in text:
        text = _IPV6_RE.sub(lambda m: _ip_sub(m, counts, True), text)
    if not _DIGIT.search(text):
        return text, counts
    mask = _Mask(text)
    text = _redact_ibans(text, counts, mask)
    if text.count(".") >= 3:  # an IPv4 address has three
        text = _IPV4_RE.sub(lambda m: _ip_sub(m, counts, False), text)
    if _DIGIT_RUN.search(text):  # replacing findings by tokens never creates a run: looked for once
        text = _redact_cards(text, counts)
        text = _SSN_RE.sub(lambda m: _ssn_sub(m, counts), text)
        if _SSN_WORD.search(text):
            text = _redact_bare_ssns(text, counts)
        if _DIGIT_RUN.search(text):
            text = _redact_phones(text, regions, counts)
    return mask.restore(text), counts


def _count(counts: Counts, kind: str) -> str:
    counts[kind] = counts.get(kind, 0) + 1
    return TOKENS[kind]


_QUERY_KEY_KINDS = {
    **dict.fromkeys(("email", "e-mail", "mail", "emailaddress", "email_address", "user_email"), EMAIL),
    **dict.fromkeys(("phone", "tel", "telephone", "mobile", "phone_number", "phonenumber", "cell"), PHONE),
    **dict.fromkeys(("name", "first_name", "firstname", "last_name", "lastname", "full_name", "fullname",
                     "fname", "lname", "given_name", "family_name", "surname"), PERSON),
    **dict.fromkeys(("ssn", "social_security_number"), SSN),
    **dict.fromkeys(("ip", "ip_address", "client_ip"), IP),
    **dict.fromkeys(("iban",), IBAN),
    **dict.fromkeys(("card", "card_number", "cc", "ccnum", "credit_card"), CARD),
}


def redact_url(url: str, regions: Tuple[str, ...] = ("US",), counts: Optional[Counts] = None
               ) -> Tuple[str, Counts]:
    """Redact a URL part by part: user info, host, path, each query value (percent-decoded first, so
    `jane%40acme.com` is found; values of keys such as `email` or `name` are replaced whole) and fragment.
    The URL is rebuilt only when something was found, so clean URLs stay byte for byte the same."""
    counts = {} if counts is None else counts
    if not url:
        return url, counts
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced '[' in the host: fall back to plain text
        return redact_text(unquote(url), regions, counts)
    before = dict(counts)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{_count(counts, EMAIL) if '@' in unquote(userinfo) else '<USER>'}@{host}"
    netloc = redact_text(netloc, regions, counts)[0]
    path = parts.path
    if _TRIGGER.search(unquote(path)):
        red = redact_text(unquote(path), regions, counts)[0]
        if red != unquote(path):
            path = quote(red, safe="/<>@:;,=+$!*'()~")
    query = parts.query
    if query:
        pairs, changed = [], False
        for key, value in parse_qsl(query, keep_blank_values=True):
            kind = _QUERY_KEY_KINDS.get(key.lower())
            if kind and value and not (value.startswith("<") and value.endswith(">")):
                new = _count(counts, kind)
            else:
                new = redact_text(value, regions, counts)[0]
            changed |= new != value
            pairs.append((key, new))
        if changed:
            query = urlencode(pairs, safe="<>/:,")
    fragment = redact_text(unquote(parts.fragment), regions, counts)[0] if parts.fragment else ""
    if counts == before:
        return url, counts
    return urlunsplit((parts.scheme, netloc, path, query, fragment or parts.fragment)), counts


def pseudonymize(value: str, key: bytes) -> str:
    """Keyed pseudonym: `ps_` + first 32 hex digits (128 bits) of HMAC-SHA256(key, value). Deterministic for
    one key, so joins across tables and topics still work; without the key it cannot be reversed or
    recomputed from a guessed value."""
    return "ps_" + hmac.digest(key, value.encode("utf-8"), "sha256").hex()[:32]


def pseudonymize_email(value: str, key: bytes) -> str:
    """Pseudonym of the lower-cased address with its domain kept (`ps_...@acme.com`): lead scoring needs the
    domain (free-mail vs corporate), and the same person stays joinable across sources."""
    local, at, domain = value.strip().rpartition("@")
    if not at:
        return pseudonymize(value.strip().lower(), key)
    return f"{pseudonymize(value.strip().lower(), key)}@{domain.lower()}"


def load_hmac_key(environ: Mapping[str, str] = os.environ) -> Optional[bytes]:
    """The pseudonymization key from `PII_HMAC_KEY` or the file named by `PII_HMAC_KEY_FILE` (None when
    neither is set). The key itself never appears in an error message or a log line."""
    if environ.get(KEY_ENV):
        key = environ[KEY_ENV].encode("utf-8")
    elif environ.get(KEY_FILE_ENV):
        key = Path(environ[KEY_FILE_ENV]).read_bytes().strip()
    else:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the PII HMAC key must be at least {MIN_KEY_BYTES} bytes (set {KEY_ENV} or {KEY_FILE_ENV})")
    return key


# --- policy -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PiiPolicy:
    """Per-field actions by event model, the phone regions, and the action for extra fields."""

    version: int
    phone_regions: Tuple[str, ...]
    extra_fields: str
    fields: Dict[str, Dict[str, str]] = field(default_factory=dict)  # {model class name: {field: action}}
    origin: str = "<dict>"  # the file it was read from, for error messages

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], contracts: Mapping[str, type] = CONTRACTS,
                  origin: str = "<dict>") -> "PiiPolicy":
        """Check the document now (pipeline build time): unknown topics, fields, actions or regions fail.
        A topic without an entry is not an error here, but RedactPii refuses to redact it (fail closed)."""
        regions = tuple(doc.get("phone_regions", ("US",)))
        for r in regions:
            if r not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(f"PII policy: unknown phone region {r!r}")
        extra = doc.get("extra_fields", "scan")
        by_model: Dict[str, Dict[str, str]] = {}
        for topic, spec in doc.get("topics", {}).items():
            model = contracts.get(topic)
            if model is None:
                raise ValueError(f"PII policy: unknown topic {topic!r}")
            for name, action in spec.items():
                if action not in ACTIONS:
                    raise ValueError(f"PII policy: {topic}.{name}: unknown action {action!r} (one of {ACTIONS})")
                if name not in model.model_fields:
                    raise ValueError(f"PII policy: {topic}: {model.__name__} has no field {name!r}")
                if action in ENCRYPT_ACTIONS and not _is_text_field(model, name):
                    raise ValueError(f"PII policy: {topic}.{name}: {action} needs a text field (str or "
                                     f"Optional[str]); {model.__name__}.{name} is "
                                     f"{model.model_fields[name].annotation!r}")
            by_model[model.__name__] = dict(spec)
        if extra not in ACTIONS:
            raise ValueError(f"PII policy: unknown extra_fields action {extra!r}")
        if extra in ENCRYPT_ACTIONS:
            raise ValueError(f"PII policy: extra_fields cannot be {extra!r}: encryption is decided field by field "
                             f"(the decrypt command must know which fields hold tokens)")
        return cls(int(doc.get("version", 1)), regions, extra, by_model, origin)

    @classmethod
    def load(cls, path: Union[str, Path, None] = None) -> "PiiPolicy":
        """From `path`, else `PII_POLICY_FILE`, else config/pii_policy.json."""
        path = Path(path or os.environ.get(POLICY_ENV) or DEFAULT_POLICY_FILE)
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), origin=str(path))

    def require(self, topic_or_model: Union[str, type], contracts: Mapping[str, type] = CONTRACTS) -> type:
        """The model of a topic (or the model itself) if the policy has an entry for it; else ValueError
        naming the topic, the model and the policy file. An entry may be `{}` (nothing to redact), but it
        must be there: an event type nobody reviewed is never written unredacted."""
        if isinstance(topic_or_model, str):
            model = contracts.get(topic_or_model)
            if model is None:
                raise ValueError(f"PII policy {self.origin}: no contract for topic {topic_or_model!r}")
            topic = topic_or_model
        else:
            model = topic_or_model
            topic = next((t for t, m in contracts.items() if m is model), None)
        if model.__name__ not in self.fields:
            raise MissingPiiPolicy(
                f"PII policy {self.origin} has no entry for topic {topic!r} (model {model.__name__}): add "
                f"\"{topic}\": {{<field>: <action>, ...}} under \"topics\" (or {{}} if it holds no PII)")
        return model

    def needs_key(self) -> bool:
        return any(a.startswith("pseudonymize") for spec in self.fields.values() for a in spec.values()) or \
            self.extra_fields.startswith("pseudonymize")

    def needs_field_keys(self, models: Optional[Iterable[type]] = None) -> bool:
        """Whether the policy encrypts a field of `models` (default: of any model)."""
        names = self.fields if models is None else [m.__name__ for m in models]
        return any(a in ENCRYPT_ACTIONS for n in names for a in self.fields.get(n, {}).values())

    def encrypted_fields(self, topic: str) -> Tuple[str, ...]:
        """The fields of `topic` that the policy encrypts (what `python -m transforms.field_crypto` decrypts)."""
        spec = self.fields.get(self.require(topic).__name__, {})
        return tuple(sorted(n for n, a in spec.items() if a in ENCRYPT_ACTIONS))


def _is_text_field(model: type, name: str) -> bool:
    import types
    import typing

    ann = model.model_fields[name].annotation
    if ann is str:
        return True
    return typing.get_origin(ann) in (Union, types.UnionType) and set(typing.get_args(ann)) == {str, type(None)}


def check_keys(policy: PiiPolicy, hmac_key: Optional[bytes], ring: Optional[KeyRing],
               models: Optional[Iterable[type]] = None) -> None:
    """Fail closed: a policy that pseudonymizes needs the HMAC key, one that encrypts fields of `models`
    (default: any) needs a key ring with an active key. The message names the settings, never a key."""
    if hmac_key is None and policy.needs_key():
        raise ValueError(f"the PII policy pseudonymizes fields: set {KEY_ENV} or {KEY_FILE_ENV}")
    if policy.needs_field_keys(models):
        if ring is None:
            raise ValueError(f"the PII policy {policy.origin} encrypts fields: set {FIELD_KEYS_FILE_ENV} (or "
                             f"{FIELD_KEYS_ENV}) to a field key ring")
        if ring.active is None:
            raise ValueError(f"the PII policy {policy.origin} encrypts fields, but the field key ring "
                             f"{ring.origin} has no active key")


_CHANGE_FIELD_ACTIONS = {
    **dict.fromkeys(("email", "emailaddress"), "pseudonymize_email"),
    **dict.fromkeys(("firstname", "lastname", "fullname", "name", "middlename"), "person"),
    **dict.fromkeys(("phone", "mobilephone", "phonenumber", "mainphone", "fax"), "phone"),
}


class MissingPiiPolicy(ValueError):
    """An event type without an entry in the PII policy: redaction fails closed."""


class Redactor:
    """Applies a policy to events (pure; no Beam). `key` is needed only by pseudonymize actions, `field_keys`
    (a transforms.field_crypto.KeyRing) only by encrypt actions. With `models`, a ring is required now if
    the policy encrypts a field of one of them; without, an event to encrypt and no ring raise when it comes
    (in the pipeline it becomes a dead letter: a value to encrypt is never passed on in clear)."""

    def __init__(self, policy: PiiPolicy, key: Optional[bytes] = None, field_keys: Optional[KeyRing] = None,
                 models: Optional[Iterable[type]] = None):
        check_keys(policy, key, field_keys, () if models is None else models)
        self.policy = policy
        self._key = key
        self._cipher = FieldCipher(field_keys) if field_keys is not None and field_keys.active else None
        self._topics = {m.__name__: t for t, m in CONTRACTS.items()}  # the associated data names the topic
        self._regions = policy.phone_regions
        self._pseudonyms: Dict[Tuple[str, str], str] = {}  # ids repeat a lot; HMAC costs ~5 us
        self._urls: Dict[str, Tuple[str, Tuple[Tuple[str, int], ...]]] = {}

    def _url(self, url: str, counts: Counts) -> str:
        """redact_url, memoised: page URLs and referrers repeat far more than free text does."""
        hit = self._urls.get(url)
        if hit is None:
            if len(self._urls) >= 50_000:
                self._urls.clear()
            red, found = redact_url(url, self._regions)
            hit = self._urls[url] = (red, tuple(found.items()))
        for kind, n in hit[1]:
            counts[kind] = counts.get(kind, 0) + n
        return hit[0]

    def _pseudonym(self, value: str, action: str) -> str:
        cached = self._pseudonyms.get((action, value))
        if cached is None:
            if len(self._pseudonyms) >= 100_000:
                self._pseudonyms.clear()
            fn = pseudonymize_email if action == "pseudonymize_email" else pseudonymize
            cached = self._pseudonyms[(action, value)] = fn(value, self._key)
        return cached

    def text(self, text: str, counts: Optional[Counts] = None) -> Tuple[str, Counts]:
        return redact_text(text, self._regions, counts)

    def value(self, value: Any, action: str, counts: Counts) -> Any:
        """One field's value under one action (strings, nested dicts/lists and models alike)."""
        if value is None or action == "keep":
            return value
        if action == "drop":
            return None
        if isinstance(value, str):
            if action == "scan":
                return redact_text(value, self._regions, counts)[0]
            if action == "url":
                return self._url(value, counts)
            if action in ("person", "phone"):
                kind = PERSON if action == "person" else PHONE
                return _count(counts, kind) if value.strip() else value
            if action in ("pseudonymize", "pseudonymize_email"):
                return self._pseudonym(value, action)
            if action in ENCRYPT_ACTIONS:
                raise ValueError(f"{action} applies to a named field only (Redactor.event), not nested values")
            return redact_text(value, self._regions, counts)[0]
        if isinstance(value, BaseModel):
            if action == "field_changes" and "field" in type(value).model_fields:
                return self._change(value, counts)
            return type(value).model_validate(self.value(value.model_dump(), action, counts))
        if isinstance(value, dict):
            out = None
            for k, v in value.items():
                new = self.value(v, action, counts)
                if new is not v:
                    if out is None:
                        out = dict(value)
                    out[k] = new
            return value if out is None else out  # unchanged containers keep their identity (cheap compare)
        if isinstance(value, (list, tuple)):
            new_items = [self.value(v, action, counts) for v in value]
            return value if all(a is b for a, b in zip(new_items, value)) else new_items
        return value  # numbers and booleans hold no free text

    def _change(self, change: BaseModel, counts: Counts) -> BaseModel:
        action = _CHANGE_FIELD_ACTIONS.get(str(change.field).replace("_", "").replace(" ", "").lower(), "scan")
        return change.model_copy(update={
            "old_value": self.value(change.old_value, action, counts),
            "new_value": self.value(change.new_value, action, counts)})

    def event(self, event: EventModel) -> Tuple[EventModel, Counts]:
        """A redacted copy of `event` and the counts per kind; metadata gets `pii` (kinds, counts, fields
        pseudonymized, policy version), never a value."""
        spec = self.policy.fields.get(type(event).__name__)
        if spec is None:  # fail closed: never pass an event type through that the policy does not cover
            self.policy.require(type(event))
        counts: Counts = {}
        updates: Dict[str, Any] = {}
        pseudonymized = []
        encrypted = []
        values = event.__dict__
        for name, action in spec.items():
            old = values[name]
            if old is None:
                continue
            if action in ENCRYPT_ACTIONS:
                if old.strip():  # the policy admits text fields only (PiiPolicy.from_dict)
                    updates[name] = self._encrypt(old, action, type(event).__name__, name)
                    encrypted.append(name)
                continue
            if type(old) is str:  # fast paths of self.value for the common string actions
                if action == "scan":
                    if not old or not _TRIGGER.search(old):
                        continue  # nothing any detector could find: redact_text returns it as is
                    new = redact_text(old, self._regions, counts)[0]
                elif action == "url":
                    new = self._url(old, counts)
                elif action == "pseudonymize":
                    new = self._pseudonym(old, action)
                else:
                    new = self.value(old, action, counts)
            else:
                new = self.value(old, action, counts)
            if new is not old and new != old:
                updates[name] = new
                if action[0] == "p" and action.startswith("pseudonymize"):
                    pseudonymized.append(name)
        extra = event.__pydantic_extra__
        if extra and self.policy.extra_fields != "keep":
            for name, old in extra.items():
                new = self.value(old, self.policy.extra_fields, counts)
                if new is not old and new != old:
                    updates[name] = new
        meta = {"policy_version": self.policy.version, "redacted": dict(sorted(counts.items())) if counts else {}}
        if pseudonymized:
            meta["pseudonymized"] = sorted(pseudonymized)
        if encrypted:
            meta["encrypted"] = sorted(encrypted)
        return event.with_metadata({"pii": meta}, **updates), counts

    def _encrypt(self, value: str, action: str, model: str, name: str) -> str:
        if self._cipher is None:
            raise ValueError(f"the PII policy encrypts {model}.{name}: set {FIELD_KEYS_FILE_ENV} (or "
                             f"{FIELD_KEYS_ENV}) to a field key ring")
        ctx = field_context(self._topics[model], name)
        return self._cipher.encrypt_email(value, ctx) if action == "encrypt_email" else self._cipher.encrypt(value, ctx)


# --- Beam -------------------------------------------------------------------------------------------------

def _models_of(element_type: Any) -> Tuple[type, ...]:
    """The EventModel classes an element type hint names (a class or a Union of them); () otherwise."""
    from apache_beam.typehints import typehints

    if isinstance(element_type, type) and issubclass(element_type, EventModel) and element_type is not EventModel:
        return (element_type,)
    if isinstance(element_type, typehints.UnionConstraint):
        found = [t for t in element_type.union_types if isinstance(t, type) and issubclass(t, EventModel)]
        if found and len(found) == len(element_type.union_types) and EventModel not in found:
            return tuple(found)
    return ()


class _RedactPiiFn(beam.DoFn):
    def __init__(self, policy: PiiPolicy, step: str, models: Tuple[type, ...]):
        self._policy = policy
        self._step = step
        self._models = models
        self._redactor: Optional[Redactor] = None
        self._found = {k: Metrics.counter(step_namespace(step), f"pii_{k}") for k in KINDS}
        self._events = Metrics.counter(step_namespace(step), "events_redacted")
        self._clean = Metrics.counter(step_namespace(step), "events_without_pii")
        self._failed = Metrics.counter(step_namespace(step), f"dead_letters_{ErrorKind.TRANSFORM.value}")
        self._unpoliced = Metrics.counter(step_namespace(step), f"dead_letters_{ErrorKind.NO_PII_POLICY.value}")

    def setup(self):
        # The keys are read on the worker, so they never travel inside the pickled pipeline graph.
        needs_ring = self._policy.needs_field_keys(self._models)
        self._redactor = Redactor(self._policy, load_hmac_key(), load_key_ring() if needs_ring else None,
                                  self._models)

    def process(self, event: EventModel):
        try:
            redacted, counts = self._redactor.event(event)
        except Exception as e:  # a detector bug must not fail the job: the event leaves as a dead letter
            unpoliced = isinstance(e, MissingPiiPolicy)
            (self._unpoliced if unpoliced else self._failed).inc()
            yield beam.pvalue.TaggedOutput(Tags.DEAD_LETTER.value, DeadLetter.of_event(
                event, step=self._step, error=e,
                error_class=(ErrorKind.NO_PII_POLICY if unpoliced else ErrorKind.TRANSFORM).value))
            return
        if counts:
            self._events.inc()
            for kind, n in counts.items():
                self._found[kind].inc(n)
        else:
            self._clean.inc()
        yield redacted


@beam.typehints.with_input_types(EventModel)
class RedactPii(beam.PTransform):
    """PCollection[EventModel] -> {valid: redacted copies, dead_letter: DeadLetter} (use `split_dead_letters()`).

    The policy is loaded and checked here, when the pipeline is built; the HMAC key and the field key ring
    (when the policy encrypts) are checked here too (`check_key=False` when only the workers have them) and
    read again in each worker's `setup()`.

    Fail closed: `topic` names the topic(s) (or model classes) whose events this step redacts, and each
    must have an entry in the policy, else ValueError now. Without `topic`, the input's element type must
    name the model(s) (beam.Create infers it). An event whose model has no entry that reaches a worker
    anyway is a dead letter (`no_pii_policy`), never written unredacted.
    """

    def __init__(self, policy: Union[PiiPolicy, str, Path, None] = None,
                 topic: Union[str, type, Iterable[Union[str, type]], None] = None, check_key: bool = True,
                 label: Optional[str] = None):
        super().__init__(label)
        self._policy = policy if isinstance(policy, PiiPolicy) else PiiPolicy.load(policy)
        self._models = None
        if topic is not None:
            wanted = [topic] if isinstance(topic, (str, type)) else list(topic)
            if not wanted:
                raise ValueError("RedactPii: topic= names no topic")
            self._models = tuple(self._policy.require(t) for t in wanted)
        self._check_key = check_key
        if check_key:
            self._check_keys(self._models or ())  # the ring, if the models are known only in expand(): there

    def _check_keys(self, models: Tuple[type, ...]) -> None:
        needs_ring = self._policy.needs_field_keys(models)
        check_keys(self._policy, load_hmac_key() if self._policy.needs_key() else None,
                   load_key_ring() if needs_ring else None, models)

    def expand(self, events):
        models = self._models
        if models is None:
            models = _models_of(events.element_type)
            if not models:
                raise ValueError(f"RedactPii {self.label}: pass topic=<topic(s)> (the input's element type "
                                 f"{events.element_type!r} names no event model), so that a topic without a "
                                 f"PII policy entry in {self._policy.origin} fails when the pipeline is built")
            for m in models:
                self._policy.require(m)
            if self._check_key:
                self._check_keys(models)
        return events | "Redact" >> beam.ParDo(_RedactPiiFn(self._policy, self.label, models)).with_outputs(
            Tags.DEAD_LETTER.value, main=Tags.VALID.value)

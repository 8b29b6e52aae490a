"""The public evaluation set for PII redaction: values this project did not write, in business text.

    .venv/bin/python benchmarks/pii_quality.py            # reports it next to the project's own set

Every labelled value comes from a public library or registry, seeded so the set is the same on every run:

- phone: Faker's `phone_number()` in 25 locales (its formats are the national conventions its contributors
  wrote down, with extensions, `001-` prefixes and random digits); libphonenumber's example numbers
  (`phonenumbers.example_number_for_type`) for every region in international and E.164 form, and in national
  form for the Faker locales' regions.
- credit_card: Faker's `credit_card_number()` for each of its card types; Luhn-valid numbers for every issuer
  range and length of the ISO/IEC 7812 IIN list as published in Wikipedia's "Payment card number" article.
- iban: schwifty's `IBAN.random()` for every country of its IBAN registry (SWIFT's registry plus the
  "aspirational" countries); Faker's `iban()` in its locales.
- email: python-email-validator's test addresses (benchmarks/data/public/email_validator_tests.json, public
  domain); Faker's `email()`, `company_email()` and `free_email()` in its locales.
- us_ssn: Faker's en_US `ssn()`.
- ip_address: Faker's `ipv4_public()`, `ipv4_private()` and `ipv6()`; the textual forms of RFC 4291 2.2,
  RFC 5952 and RFC 6052 (compressed, uncompressed, IPv4-mapped and IPv4-embedded).

Negatives (must come out unchanged): Faker business text per locale (addresses, dates in local formats, prices,
order/invoice/ticket numbers, versions, EAN/UPC/ISBN codes, coordinates, UUIDs, tracking numbers, amounts
with thousands separators), and look-alikes that fail their checks: Faker's `invalid_ssn()`, IBANs with a
wrong check digit, invalid IPv4/IPv6 strings, and email-validator's strings that are no address at all.

The context around each value (labels such as `Tel.`, `Fax:`, `Desk:`, contact blocks where the number
starts a line, CSV and JSON rows, sentences with and without a keyword) is drawn from fixed template lists.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import phonenumbers
from faker import Faker
from schwifty import IBAN
from schwifty import registry as iban_registry
from schwifty.exceptions import InvalidCountryCode

DATA = Path(__file__).resolve().parent / "data" / "public"

PHONE_LOCALES = ("en_US", "en_CA", "en_GB", "en_AU", "en_NZ", "en_IN", "de_DE", "de_AT", "de_CH", "fr_FR",
                 "fr_CH", "nl_NL", "nl_BE", "es_ES", "es_MX", "it_IT", "pt_BR", "pt_PT", "pl_PL", "sv_SE",
                 "no_NO", "da_DK", "fi_FI", "ja_JP", "ko_KR")
TEXT_LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_BR", "pl_PL", "en_IN")

# A case: {"segments": [text or (kind, value), ...], "source": str} or, for negatives,
# {"segments": [...], "negatives": [(source, token), ...]}: tokens that must come out unchanged.
Case = Dict


def _fakers(locales: Sequence[str], seed: int) -> Dict[str, Faker]:
    out = {}
    for i, loc in enumerate(locales):
        f = Faker(loc)
        f.seed_instance(seed * 1000 + i)
        out[loc] = f
    return out


# --- contexts ---------------------------------------------------------------------------------------------

PHONE_LABELS = ("Tel: ", "Tel. ", "Phone: ", "phone ", "Ph: ", "Mobile: ", "Mob. ", "Cell: ", "Fax: ", "Desk: ",
                "Direct: ", "Office: ", "Hotline: ", "Telefon: ", "Tél. : ", "Teléfono: ", "Telefone: ",
                "Tlf. ", "電話: ", "Contact: ", "WhatsApp ")
# (template, needs a second value): {v} (and {w}) are the values; {name} {company} {street} {city} {email} {job}
# are Faker's, in the same locale.
PHONE_TEMPLATES: Tuple[Tuple[str, bool], ...] = (
    ("{label}{v}", False),
    ("{name}, {job}\n{label}{v}\n{email}", False),
    ("{name}\n{company}\n{street}\n{city}\n{v}", False),  # the number starts a line after one ending in a letter
    ("{company}\n{v}\n{email}", False),
    ("You can reach {name} at {v} between 9 and 5.", False),
    ("Please call {v} to confirm the delivery.", False),
    ("Call me back on {v}, thanks!", False),
    ("{name} ({v}) asked about the renewal.", False),
    ("{v} (mobile)", False),
    ("Main line {v}-Fax", False),
    ("{v}-Fax", False),
    ("Phones: {v}, {w}", True),
    ("{label}{v} / {w}", True),
    ('"{name}",{v},"{city}"', False),
    ('{{"name": "{name}", "phone": "{v}"}}', False),
    ("{name} | {company} | {v} | {email}", False),
    ("Details -> {v} <- end", False),
    ("(see {v})", False),
    ("The new number is {v}.", False),
    ("Desk:{v}", False),
)
GENERIC_TEMPLATES = ("Hi, it's me: {v}. Thanks!", "please use {v} going forward", "{v}", "Contact: {v}; ok?",
                     "Le client a donné {v} hier.", "Details -> {v} <- end", "(see {v})",
                     "{name}\n{company}\n{v}", '{{"value": "{v}", "note": "{job}"}}', "{name},{v},{city}",
                     "Bitte {v} verwenden.", "Dados: {v}")
KIND_LABELS = {
    "credit_card": ("Card: ", "card number ", "Visa ", "CC# ", "paid with ", "Karte: ", "carte n° ", "tarjeta "),
    "iban": ("IBAN: ", "IBAN ", "Bank account: ", "Konto: ", "Compte : ", "please transfer to "),
    "email": ("Email: ", "mail ", "E-Mail: ", "Courriel : ", "contact ", "write to "),
    "us_ssn": ("SSN: ", "SSN ", "social security number ", "SS# "),
    "ip_address": ("IP: ", "from ", "client ", "server at ", "host "),
}


def _fill(f: Faker, template: str, rng: random.Random, values: Dict[str, Tuple[str, str]]) -> List:
    """The template as literal text and labelled (kind, value) segments, in order."""
    fields = {"name": f.name(), "company": f.company(), "street": f.street_address(), "city": f.city(),
              "job": f.job(), "label": rng.choice(PHONE_LABELS),
              "email": f.user_name() + " at " + f.domain_word(),  # no second labelled value in these cases
              "v": "\x00v\x00", "w": "\x00w\x00"}
    text = template.format(**fields)
    return [values[p] if i % 2 else p for i, p in enumerate(text.split("\x00")) if i % 2 or p]


def _case(f: Faker, rng: random.Random, kind: str, value: str, source: str,
          second: Optional[str] = None) -> Case:
    if kind == "phone":
        template, two = rng.choice(PHONE_TEMPLATES)
        if two and second is None:
            template = "{label}{v}"
    elif rng.random() < 0.5:
        template, two = rng.choice(KIND_LABELS[kind]) + "{v}", False
    else:
        template, two = rng.choice(GENERIC_TEMPLATES), False
    values = {"v": (kind, value)}
    if two and second is not None:
        values["w"] = (kind, second)
    segments = _fill(f, template, rng, values)
    return {"segments": [s for s in segments if s != ""], "source": source}


# --- phones -----------------------------------------------------------------------------------------------

def _phones(seed: int, per_locale: int) -> Iterator[Case]:
    rng = random.Random(seed)
    fakers = _fakers(PHONE_LOCALES, seed)
    for loc, f in fakers.items():
        for _ in range(per_locale):
            yield _case(f, rng, "phone", f.phone_number(), "faker phone_number", f.phone_number())
    types = (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE,
             phonenumbers.PhoneNumberType.TOLL_FREE)
    national = {loc.split("_")[1] for loc in PHONE_LOCALES}
    f = fakers["en_US"]
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for t in types:
            n = phonenumbers.example_number_for_type(region, t)
            if n is None:
                continue
            forms = [phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164]
            if region in national:
                forms.append(phonenumbers.PhoneNumberFormat.NATIONAL)
            for form in forms:
                yield _case(f, rng, "phone", phonenumbers.format_number(n, form), "libphonenumber examples")


# --- cards ------------------------------------------------------------------------------------------------

# ISO/IEC 7812 issuer ranges and lengths, from Wikipedia's "Payment card number" article (IIN ranges table).
IIN_RANGES: Tuple[Tuple[str, Tuple[str, str], Tuple[int, ...]], ...] = (
    ("American Express", ("34", "34"), (15,)), ("American Express", ("37", "37"), (15,)),
    ("BORICA", ("2205", "2205"), (16,)), ("China T-Union", ("31", "31"), (19,)),
    ("China UnionPay", ("62", "62"), (16, 17, 18, 19)), ("China UnionPay", ("81", "81"), (16, 17, 18, 19)),
    ("Diners Club International", ("36", "36"), (14, 15, 16, 17, 18, 19)),
    ("Diners Club Carte Blanche", ("300", "305"), (14,)), ("Diners Club US & Canada", ("54", "55"), (16,)),
    ("Discover", ("6011", "6011"), (16, 17, 18, 19)), ("Discover", ("644", "649"), (16, 17, 18, 19)),
    ("Discover", ("65", "65"), (16, 17, 18, 19)), ("Discover", ("622126", "622925"), (16, 17, 18, 19)),
    ("UkrCard", ("60400100", "60420099"), (16, 17, 18, 19)), ("RuPay", ("60", "60"), (16,)),
    ("RuPay", ("65", "65"), (16,)), ("RuPay", ("81", "82"), (16,)), ("RuPay", ("508", "508"), (16,)),
    ("RuPay", ("353", "353"), (16,)), ("RuPay", ("356", "356"), (16,)),
    ("InterPayment", ("636", "636"), (16, 17, 18, 19)), ("InstaPayment", ("637", "639"), (16,)),
    ("JCB", ("3528", "3589"), (16, 17, 18, 19)), ("Laser", ("6304", "6304"), (16, 17, 18, 19)),
    ("Laser", ("6706", "6706"), (16, 17, 18, 19)), ("Laser", ("6771", "6771"), (16, 17, 18, 19)),
    ("Laser", ("6709", "6709"), (16, 17, 18, 19)),
    ("Maestro UK", ("6759", "6759"), (12, 13, 14, 15, 16, 17, 18, 19)),
    ("Maestro UK", ("676770", "676770"), (12, 13, 14, 15, 16, 17, 18, 19)),
    ("Maestro UK", ("676774", "676774"), (12, 13, 14, 15, 16, 17, 18, 19)),
    ("Maestro", ("5018", "5018"), (12, 13, 14, 15, 16, 17, 18, 19)),
    ("Maestro", ("5020", "5020"), (12, 13, 14, 15, 16, 17, 18, 19)),
    ("Maestro", ("5038", "5038"), (12, 13, 14, 15, 16, 17, 18, 19)),
    ("Maestro", ("5893", "5893"), (12, 13, 14, 15, 16, 17, 18, 19)),
    ("Maestro", ("6304", "6304"), (12, 13, 14, 15, 16, 17, 18, 19)),
    ("Maestro", ("6761", "6763"), (12, 13, 14, 15, 16, 17, 18, 19)),
    ("Dankort", ("5019", "5019"), (16,)), ("Visa/Dankort", ("4571", "4571"), (16,)),
    ("Mir", ("2200", "2204"), (16, 17, 18, 19)), ("NPS Pridnestrovie", ("6054740", "6054744"), (16,)),
    ("Mastercard", ("2221", "2720"), (16,)), ("Mastercard", ("51", "55"), (16,)),
    ("Troy", ("65", "65"), (16,)), ("Troy", ("9792", "9792"), (16,)),
    ("Visa", ("4", "4"), (13, 16, 19)), ("Visa Electron", ("4026", "4026"), (16,)),
    ("Visa Electron", ("417500", "417500"), (16,)), ("Visa Electron", ("4508", "4508"), (16,)),
    ("Visa Electron", ("4844", "4844"), (16,)), ("Visa Electron", ("4913", "4913"), (16,)),
    ("Visa Electron", ("4917", "4917"), (16,)), ("UATP", ("1", "1"), (15,)),
    ("Verve", ("506099", "506198"), (16, 18, 19)), ("Verve", ("650002", "650027"), (16, 18, 19)),
    ("Verve", ("507865", "507964"), (16, 18, 19)), ("LankaPay", ("357111", "357111"), (16,)),
    ("UzCard", ("8600", "8600"), (16,)), ("Humo", ("9860", "9860"), (16,)),
    ("GPN", ("1946", "1946"), (16, 18, 19)), ("GPN", ("50", "50"), (16, 18, 19)),
    ("GPN", ("56", "56"), (16, 18, 19)), ("GPN", ("58", "58"), (16, 18, 19)),
    ("GPN", ("60", "63"), (16, 18, 19)),
)
_GROUPS = {12: (4, 4, 4), 13: (4, 4, 5), 14: (4, 6, 4), 15: (4, 6, 5), 16: (4, 4, 4, 4), 17: (4, 4, 4, 5),
           18: (4, 4, 4, 6), 19: (4, 4, 4, 4, 3)}


def luhn_complete(body: str) -> str:
    """`body` + the check digit that makes it pass the Luhn test."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def _card_format(number: str, rng: random.Random) -> str:
    sep = rng.choice(("", " ", "-"))
    if not sep:
        return number
    out, i = [], 0
    for g in _GROUPS[len(number)]:
        out.append(number[i:i + g])
        i += g
    return sep.join(out)


def _cards(seed: int, n_faker: int) -> Iterator[Case]:
    rng = random.Random(seed + 1)
    fakers = _fakers(TEXT_LOCALES, seed + 1)
    from faker.providers.credit_card import Provider as CardProvider
    types = sorted(CardProvider.credit_card_types)
    for i in range(n_faker):
        f = fakers[TEXT_LOCALES[i % len(TEXT_LOCALES)]]
        number = f.credit_card_number(card_type=types[i % len(types)])
        yield _case(f, rng, "credit_card", _card_format(number, rng), "faker credit_card_number")
    f = fakers["en_US"]
    for scheme, (lo, hi), lengths in IIN_RANGES:
        for length in lengths:
            for _ in range(4):
                prefix = str(rng.randint(int(lo), int(hi))).zfill(len(lo))
                body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
                yield _case(f, rng, "credit_card", _card_format(luhn_complete(body), rng), "IIN ranges (Wikipedia)")


# --- IBANs, emails, SSNs, IPs -----------------------------------------------------------------------------

def registry_countries() -> List[str]:
    """Every country code schwifty's IBAN registry has a spec for."""
    out = []
    for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        for b in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            try:
                iban_registry.get_iban_spec(a + b)
            except InvalidCountryCode:
                continue
            out.append(a + b)
    return out


def _iban_format(compact: str, rng: random.Random) -> str:
    return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4)) if rng.random() < 0.5 else compact


def _ibans(seed: int, per_country: int, n_faker: int) -> Iterator[Case]:
    rng = random.Random(seed + 2)
    fakers = _fakers(TEXT_LOCALES, seed + 2)
    f = fakers["en_US"]
    for country in registry_countries():
        for _ in range(per_country):
            iban = IBAN.random(country, random=rng, use_registry=False)
            yield _case(f, rng, "iban", _iban_format(str(iban.compact), rng), "schwifty registry")
    for i in range(n_faker):
        g = fakers[TEXT_LOCALES[i % len(TEXT_LOCALES)]]
        iban = g.iban()
        if IBAN(iban, allow_invalid=True).is_valid:  # Faker's en_GB IBANs are one digit short: not IBANs
            yield _case(g, rng, "iban", _iban_format(iban, rng), "faker iban")


def email_validator_cases() -> Dict[str, List[str]]:
    return json.loads((DATA / "email_validator_tests.json").read_text(encoding="utf-8"))


def _emails(seed: int, n_faker: int) -> Iterator[Case]:
    rng = random.Random(seed + 3)
    fakers = _fakers(TEXT_LOCALES, seed + 3)
    f = fakers["en_US"]
    for addr in email_validator_cases()["valid"]:
        for _ in range(3):
            yield _case(f, rng, "email", addr, "email-validator tests")
    for i in range(n_faker):
        g = fakers[TEXT_LOCALES[i % len(TEXT_LOCALES)]]
        addr = rng.choice((g.email, g.company_email, g.free_email))()
        yield _case(g, rng, "email", addr, "faker email")


def _ssns(seed: int, n: int) -> Iterator[Case]:
    rng = random.Random(seed + 4)
    f = _fakers(("en_US",), seed + 4)["en_US"]
    for _ in range(n):
        yield _case(f, rng, "us_ssn", f.ssn(), "faker ssn")


# RFC 4291 section 2.2 and 2.5.5, RFC 5952 section 4 and 5, RFC 6052 section 2.4 (documentation prefixes).
RFC_IPS = ("2001:DB8:0:0:8:800:200C:417A", "FF01:0:0:0:0:0:0:101", "0:0:0:0:0:0:0:1", "0:0:0:0:0:0:0:0",
           "2001:DB8::8:800:200C:417A", "FF01::101", "::1", "0:0:0:0:0:0:13.1.68.3", "0:0:0:0:0:FFFF:129.144.52.38",
           "::13.1.68.3", "::FFFF:129.144.52.38", "::ffff:192.0.2.128", "2001:db8::1", "2001:db8:0:0:1:0:0:1",
           "2001:0db8:0:0:1:0:0:1", "2001:db8::0:1:0:0:1", "2001:db8:0:0:1::1", "2001:DB8:0:0:1::1",
           "2001:db8:aaaa:bbbb:cccc:dddd:eeee:0001", "2001:db8:aaaa:bbbb:cccc:dddd::1", "2001:db8::1:0:0:1",
           "2001:db8:0:1:1:1:1:1", "2001:db8::aaaa:0:0:1", "2001:db8:0:0:aaaa::1", "::ffff:192.0.2.1",
           "64:ff9b::192.0.2.33", "2001:db8:c000:221::", "2001:db8:1c0:2:21::", "2001:db8:122:c000:2:2100::",
           "2001:db8:122:3c0:0:221::", "2001:db8:122:344:c0:2:2100::", "2001:db8:122:344::192.0.2.33",
           "2001:db8::8a2e:192.168.0.1", "fe80::1%eth0", "192.0.2.1", "198.51.100.23", "203.0.113.254",
           "10.0.0.1", "172.16.254.1", "255.255.255.255", "0.0.0.0")
BAD_IPS = ("192.168.1.256", "10.0.0.300", "256.1.1.1", "1.2.3", "1.2.3.4.5", "999.999.999.999",
           "2001:db8::g1", "2001:db8:::1", "1:2:3:4:5:6:7:8:9", "12:30:45", "00:1A:2B:3C:4D:5E")


def _ips(seed: int, n_faker: int) -> Iterator[Case]:
    rng = random.Random(seed + 5)
    f = _fakers(("en_US",), seed + 5)["en_US"]
    for ip in RFC_IPS:
        for _ in range(4):
            yield _case(f, rng, "ip_address", ip, "RFC 4291/5952/6052 examples")
    for _ in range(n_faker):
        ip = rng.choice((f.ipv4_public, f.ipv4_private, f.ipv6, f.ipv6))()
        yield _case(f, rng, "ip_address", ip, "faker ipv4/ipv6")


# --- negatives --------------------------------------------------------------------------------------------

def _dates(f: Faker, rng: random.Random) -> str:
    d = f.date_time_between("-6y", "+2y")
    fmt = rng.choice(("%Y-%m-%d", "%d.%m.%Y", "%m/%d/%Y", "%d/%m/%Y", "%d-%m-%Y", "%Y%m%d", "%B %d, %Y",
                      "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M:%S", "%d.%m.%y", "%H:%M", "%H:%M:%S",
                      "%d %b %Y", "%Y/%m/%d"))
    return d.strftime(fmt)


def _business_tokens(f: Faker, rng: random.Random) -> List[Tuple[str, str]]:
    """(label, token) pairs: the label (may be empty) is context, the token must survive."""
    n = rng.randint
    year = n(2019, 2027)
    amount = n(1000, 99_999_999)
    spaced = f"{amount:,}".replace(",", rng.choice((" ", "\u202f", ".", "'")))
    tokens = [
        ("Order ", f"#{n(10000, 9_999_999_999)}"), ("order no. ", str(n(100000, 99_999_999))),
        ("Invoice ", f"INV-{year}-{n(1, 999999):06d}"), ("ticket ", f"{n(100000, 9999999)}"),
        ("case ", f"{year}-{n(1, 999999):06d}"), ("PO ", f"{n(4500000000, 4599999999)}"),
        ("", f.pricetag()), ("", f"${n(1, 99)},{n(100, 999)}.{n(0, 99):02d}"),
        ("", f"{spaced} {rng.choice(('EUR', '€', 'zł', 'CHF', 'kr', 'USD', 'units', 'users'))}"),
        ("due ", _dates(f, rng)), ("on ", _dates(f, rng)), ("", _dates(f, rng)),
        ("", f"{n(8, 11)}:{n(0, 5)}0-{n(12, 18)}:{n(0, 5)}0"),
        ("version ", f"{n(0, 12)}.{n(0, 99)}.{n(0, 20)}"), ("", f"v{n(0, 12)}.{n(0, 99)}.{n(0, 20)}"),
        ("build ", f"{n(1, 12)}.{n(0, 9)}.{n(10000, 22999)}.{n(1, 9999)}"),
        ("EAN ", f.ean13()), ("", f.ean13()), ("EAN-8 ", f.ean8()), ("ISBN ", f.isbn13()), ("", f.isbn10()),
        ("UPC ", f.ean(length=13)[1:]), ("SKU ", f"SKU-{n(100000, 999999)}"),
        ("art. ", f"{n(100, 999)}-{n(1000, 9999)}"),
        ("", str(f.uuid4())), ("sha ", f.sha1()[:12]), ("", f"{f.latitude()}, {f.longitude()}"),
        ("", f"{n(1, 99)}.{n(0, 9)}%"), ("", f"{n(1, 500)} seats"), ("", f"{n(1, 9)},{n(100, 999)} km"),
        ("tracking ", "1Z" + "".join(rng.choice("0123456789ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(16))),
        ("tracking ", "94" + "".join(rng.choice("0123456789") for _ in range(20))),
        ("", str(n(1_600_000_000_000, 1_900_000_000_000))), ("", f.postcode()), ("", f.street_address()),
        ("room ", f"{n(1, 9)}.{n(10, 99)}"), ("gate ", f"B{n(1, 60)}"), ("", f"{n(1, 9)}x{n(10, 99)} mm"),
        ("serial no. ", f"{n(1000, 9999)}-{n(1000, 9999)}-{n(10, 99)}"), ("Ref: ", f"{n(10, 99)}/{n(1000, 9999)}"),
        ("", f"{n(1, 28)}.{n(1, 12)}.-{n(1, 28)}.{n(1, 12)}."), ("score ", f"{n(0, 9)}-{n(0, 9)}"),
        ("", f"{year}/{year + 1}"), ("Q", f"{n(1, 4)} {year}"), ("", f"{n(1, 999)}.{n(0, 99):02d} {f.currency_code()}"),
    ]
    if hasattr(f, "zipcode_plus4"):
        tokens.append(("", f.zipcode_plus4()))
    rng.shuffle(tokens)
    return tokens[:6]


def _negatives(seed: int, n_texts: int) -> Iterator[Case]:
    rng = random.Random(seed + 6)
    fakers = _fakers(TEXT_LOCALES, seed + 6)
    for i in range(n_texts):
        f = fakers[TEXT_LOCALES[i % len(TEXT_LOCALES)]]
        segments: List = [f.sentence(nb_words=6) + " "]
        negatives = []
        for label, tok in _business_tokens(f, rng):
            sep = rng.choice((" ", ", ", "; ", "\n", " and "))
            segments += [label, ("neg", tok), sep]
            negatives.append(("faker business text", tok))
        words = f.sentence(nb_words=8)
        segments.append(words)
        negatives += [("faker business words", w) for w in words.split()]
        yield {"segments": [s for s in segments if s != ""], "negatives": negatives}
    f = fakers["en_US"]
    look_alikes = [("faker invalid_ssn", f.invalid_ssn()) for _ in range(300)]
    for _ in range(300):
        iban = IBAN.random(rng.choice(registry_countries()), random=rng, use_registry=False).compact
        check = (int(iban[2:4]) + rng.randint(1, 96)) % 97 + 2  # any other check digits: the mod-97 test fails
        bad = iban[:2] + f"{check % 100:02d}" + iban[4:]
        if bad != iban:
            look_alikes.append(("IBAN with a wrong check digit", _iban_format(bad, rng)))
    look_alikes += [("invalid IP strings", ip) for ip in BAD_IPS for _ in range(4)]
    look_alikes += [("email-validator non-addresses", a) for a in email_validator_cases()["not_addresses"]
                    for _ in range(3)]
    for source, tok in look_alikes:
        template = rng.choice(("value {v} noted", "{v}", "({v})", "got: {v}.", "Ref {v}\nthanks"))
        before, after = template.split("{v}")
        yield {"segments": [s for s in (before, ("neg", tok), after) if s], "negatives": [(source, tok)]}


# --- the set ----------------------------------------------------------------------------------------------

def build_public_set(seed: int = 11, scale: int = 1) -> List[Case]:
    """All public cases, deterministic for a seed. `scale` multiplies the generated counts."""
    cases: List[Case] = []
    cases += _phones(seed, 60 * scale)
    cases += _cards(seed, 600 * scale)
    cases += _ibans(seed, 4 * scale, 400 * scale)
    cases += _emails(seed, 600 * scale)
    cases += _ssns(seed, 600 * scale)
    cases += _ips(seed, 600 * scale)
    cases += _negatives(seed, 600 * scale)
    return cases


def render(case: Case) -> Tuple[str, List[Tuple[str, str, int, int]]]:
    """The case's text and its labelled spans (kind, value, start, end)."""
    parts, spans, pos = [], [], 0
    for s in case["segments"]:
        if isinstance(s, str):
            parts.append(s)
            pos += len(s)
        else:
            kind, value = s
            parts.append(value)
            spans.append((kind, value, pos, pos + len(value)))
            pos += len(value)
    return "".join(parts), spans

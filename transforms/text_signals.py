"""Cheap, deterministic text signals for agent turns: sentiment, topics and language.

Lexicon and stop-word rules rather than a model: they run at >100k texts/s, give the same answer on every
worker and every replay, and are easy to reason about in a dashboard. Their version is part of
`transforms.scoring.SCORER_VERSION`; change a word list and that version must change too.
"""

from __future__ import annotations

import re
from typing import Dict, FrozenSet, List, Tuple

_WORD = re.compile(r"[a-zà-öø-ÿ']+")

POSITIVE = frozenset("""
thanks thank great good excellent awesome perfect love helpful happy glad amazing wonderful appreciate nice
fantastic works worked resolved easy fast yes sure pleased delighted brilliant cool super
""".split())
NEGATIVE = frozenset("""
bad terrible awful hate angry annoyed frustrated frustrating broken bug error fail failed failing slow wrong
useless disappointed disappointing problem issue issues cancel refund complaint worst confusing stuck unable
sorry can't cannot won't doesn't
""".split())

TOPIC_KEYWORDS: Dict[str, FrozenSet[str]] = {
    "pricing": frozenset("price prices pricing cost costs plan plans quote discount billed annually monthly $".split()),
    "demo": frozenset("demo demos trial walkthrough book booking schedule meeting".split()),
    "integration": frozenset("integration integrations integrate api salesforce hubspot webhook sync slack".split()),
    "support": frozenset("help issue problem error bug broken support fix troubleshoot".split()),
    "billing": frozenset("invoice invoices billing payment refund charge charged subscription receipt".split()),
    "shipping": frozenset("order shipped shipping delivery arrive tracking package".split()),
    "onboarding": frozenset("onboarding setup install guide getting started account signup".split()),
    "product": frozenset("feature features product products seats widget dashboard analytics".split()),
}

# The most frequent function words per language; a text is assigned the language with the most hits.
STOPWORDS: Dict[str, FrozenSet[str]] = {
    "en": frozenset("the and is are to of a in that it for you with on this be have can i we our your".split()),
    "es": frozenset("el la los las de que y en un una es por para con no su al lo como más pero".split()),
    "fr": frozenset("le la les de des et est un une pour que qui dans pas vous nous avec sur au du".split()),
    "de": frozenset("der die das und ist nicht ein eine zu den mit sie ich wir für auf des dem im".split()),
    "pt": frozenset("o a os as de que e do da em um uma para com não é no na por mais".split()),
    "it": frozenset("il lo la gli le di che e è un una per non con sono del della nel ma".split()),
}
_LANG_ORDER = ("en", "es", "fr", "de", "pt", "it")
_ANY_STOPWORD = frozenset().union(*STOPWORDS.values())


def words(text: str) -> List[str]:
    return _WORD.findall(text.lower()) if text else []


def sentiment(tokens: List[str]) -> Tuple[str, int]:
    """(label, score) with score = #positive words - #negative words; label positive if > 0, negative
    if < 0, else neutral."""
    score = sum(map(POSITIVE.__contains__, tokens)) - sum(map(NEGATIVE.__contains__, tokens))
    return ("positive" if score > 0 else "negative" if score < 0 else "neutral"), score


def topics(tokens: List[str], text: str = "") -> List[str]:
    """Sorted topic names with at least one keyword in the text ('$' counts for pricing)."""
    present = set(tokens)
    if "$" in text:
        present.add("$")
    return sorted(t for t, kws in TOPIC_KEYWORDS.items() if not present.isdisjoint(kws))


def language(tokens: List[str]) -> str:
    """ISO 639-1 code of the language with the most stop-word hits (ties: en, es, fr, de, pt, it order);
    'und' (undetermined) with fewer than 2 hits."""
    best, best_hits = "und", 1
    tokens = list(filter(_ANY_STOPWORD.__contains__, tokens))  # one pass; the six counts then run on hits only
    if len(tokens) <= best_hits:
        return best
    for lang in _LANG_ORDER:
        hits = sum(map(STOPWORDS[lang].__contains__, tokens))
        if hits > best_hits:
            best, best_hits = lang, hits
    return best

"""Visual Genome names, predicates and attributes → the slot words of factmas facts.

The words are normalised with the rules and word lists of the Flickr8k miner (``data_prep/mining.py``)
so that a VG file and a Flickr8k file name the same things the same way; what differs is that VG's
strings are annotated phrases, not parsed captions, so no parser is run:

* **Noun (object and subject names).** Lower-cased, words of letters (``t-shirt``, ``man's`` are
  one word each). The head is the last word; with an *of* phrase whose head is a collective noun
  (``group of people``, ``pile of snow``) the head of the phrase after *of* is taken, as the miner
  does. Modifiers are dropped (``white shirt`` → shirt), as the miner keeps the head noun only.
  The singular lemma is lemminflect's (``getLemma(word, upos='NOUN')``; where it offers two, the one
  that is not also the word's verb lemma: ``leaves`` → leaf); plural-only words (glasses, jeans,
  ...) stay. People words (man, woman, boy, people, crowd, ...) become ``person``; filler nouns
  (``STOP_NOUNS``: thing, area, background, ...) give no noun. Unlike the miner, a collective noun
  without an *of* phrase (``picture``, ``line``) is kept: in VG it names a real object.
* **Noun from a WordNet synset** (``--names synset``): ``man.n.01`` → man, ``stop_sign.n.01`` →
  stop sign, then the people rule.
* **Predicate.** Lower-cased words of letters; articles (a, an, the) and a leading form of *be*
  (``is on``) are dropped. A first word in -ing or a 3rd-person -s form is replaced by its verb
  lemma (``wearing`` → wear, ``sitting on`` → sit on, ``has`` → have), as the miner lemmatises
  verbs; past participles stay as written (``parked on``, ``covered in``: they are passive, and the
  miner makes no fact of passives); spatial words (left, right, front, top, next, near, over) stay.
* **⟨S,P⟩ from a predicate.** Only an active verb gives one, its lemma alone (``sitting on`` →
  ⟨S, sit⟩), as the miner gives ⟨dog, run⟩ beside ⟨dog, run through, grass⟩; not a light verb
  (have, do, make, ...) nor *be*; a preposition (on, in, near) gives none.
* **Attribute.** Lower-cased words of letters; an -ing word is replaced by its verb lemma
  (``smiling`` → smile, as the miner gives ⟨person, smile⟩); adjectives and past participles
  (``white``, ``striped``, ``parked``) stay.

At most ``MAX_SLOT_WORDS`` (4) words per slot; a longer phrase gives no word (the caller counts it).
"""
from __future__ import annotations

import re
from functools import lru_cache

from .mining import (COLLECTIVE, COLLECTIVE_PEOPLE, LIGHT_VERBS, MAX_SLOT_WORDS, PEOPLE, PLURALIA,
                     SKIP_VERBS, STOP_NOUNS)

_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")
ARTICLES = frozenset({"a", "an", "the"})
BE_FORMS = frozenset("is are was were be been being am".split())
# spatial words that lemminflect also knows as verbs ("left" → leave, "top" → top)
SPATIAL = frozenset("left right front top next near over".split())


def words(text: str) -> list[str]:
    """Lower-cased words of letters (inner ' and - kept) of ``text``."""
    return _WORD.findall(text.lower())


def _noun_lemma(word: str) -> str:
    from lemminflect import getAllLemmas, getLemma

    if word in PLURALIA:
        return word
    cands = getLemma(word, upos="NOUN")
    if len(cands) > 1:     # "leaves": (leave, leaf); the verb's lemma is the wrong one for a name
        verb = set(getAllLemmas(word, upos="VERB").get("VERB", ()))
        cands = tuple(c for c in cands if c not in verb) or cands
    return cands[0] if cands else word


def _person_or_stop(lemma: str, word: str) -> str | None:
    if word in PEOPLE or lemma in PEOPLE or lemma in COLLECTIVE_PEOPLE:
        return "person"
    if word in STOP_NOUNS or lemma in STOP_NOUNS:
        return None
    return lemma


@lru_cache(maxsize=1 << 18)      # VG repeats its strings: 2.3 M relationships
def noun(text: str) -> str | None:
    """The normalised head noun of an object name, or None when it has none (module rules).

    >>> noun("White T-Shirt"), noun("group of Men"), noun("leaves"), noun("background")
    ('t-shirt', 'person', 'leaf', None)
    """
    ws = words(text)
    if "of" in ws:
        i = ws.index("of")
        left, right = ws[:i], ws[i + 1:]
        if left and right and (left[-1] in COLLECTIVE or _noun_lemma(left[-1]) in COLLECTIVE):
            ws = right
        elif left:
            ws = left
    ws = [w for w in ws if w not in ARTICLES]
    if not ws:
        return None
    head = ws[-1]
    return _person_or_stop(_noun_lemma(head), head)


@lru_cache(maxsize=1 << 18)
def synset_noun(synset: str) -> str | None:
    """The lemma of a WordNet synset name (``stop_sign.n.01`` → stop sign), people → person.

    Returns None for a malformed name or one longer than MAX_SLOT_WORDS words.
    """
    parts = synset.strip().lower().split(".")
    if len(parts) < 3 or not parts[0]:
        return None
    ws = [w for w in parts[0].replace("_", " ").split() if w]
    if not ws or len(ws) > MAX_SLOT_WORDS:
        return None
    return _person_or_stop(" ".join(ws), " ".join(ws))


def _verb_lemma(word: str) -> str | None:
    """The verb lemma of an -ing or 3rd-person -s form (``has`` too), else None."""
    from lemminflect import getAllLemmas

    if word in SPATIAL or not (word.endswith("ing") or word.endswith("s")):
        return None
    lemmas = getAllLemmas(word, upos="VERB").get("VERB", ())
    return lemmas[0] if lemmas and lemmas[0] != word else None


@lru_cache(maxsize=1 << 18)
def predicate(text: str) -> tuple[str, str | None] | None:
    """(predicate of ⟨S,P,O⟩, verb of the ⟨S,P⟩ fact or None), or None when no word is left or the
    predicate is longer than MAX_SLOT_WORDS words (module rules).

    >>> predicate("is Sitting on"), predicate("ON"), predicate("has a"), predicate("parked on")
    (('sit on', 'sit'), ('on', None), ('have', None), ('parked on', None))
    """
    ws = [w for w in words(text) if w not in ARTICLES]
    while ws and ws[0] in BE_FORMS and len(ws) > 1:
        ws = ws[1:]
    if not ws or len(ws) > MAX_SLOT_WORDS:
        return None
    lemma = _verb_lemma(ws[0])
    if lemma is not None:
        ws = [lemma, *ws[1:]]
    verb = lemma if lemma is not None and lemma not in LIGHT_VERBS | SKIP_VERBS else None
    return " ".join(ws), verb


@lru_cache(maxsize=1 << 18)
def attribute(text: str) -> str | None:
    """The normalised attribute (module rules), or None when no word is left or it is too long.

    >>> attribute(" Smiling "), attribute("striped"), attribute("dark blue")
    ('smile', 'striped', 'dark blue')
    """
    ws = [w for w in words(text) if w not in ARTICLES]
    if not ws or len(ws) > MAX_SLOT_WORDS:
        return None
    from lemminflect import getAllLemmas

    out = []
    for w in ws:
        lemmas = getAllLemmas(w, upos="VERB").get("VERB", ()) if w.endswith("ing") else ()
        out.append(lemmas[0] if lemmas else w)
    return " ".join(out)

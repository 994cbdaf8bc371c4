"""Read source documents into numbered lines and cut them into overlapping chunks on heading/sentence boundaries.

Formats: Markdown and plain text (.md, .markdown, .txt), HTML (.html, .htm; scripts and styles dropped,
h1-h6 become section starts), JSONL (one section per row: its `text`/`content` field, the contents of its
`messages`, or its string fields), and PDF (text via pypdf; the "line" of a PDF chunk is its page number).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tunesmith.data.formats import TOO_DEEP, parse_json
from tunesmith.errors import DataError

SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".jsonl", ".pdf")
SECTION_BREAK = "\f"  # a line holding only this starts a new section (JSONL rows, PDF pages)
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s")
# A sentence: from a non-space character up to the end punctuation followed by whitespace, or the paragraph's end.
_SENTENCE = re.compile(r"\S.*?(?:[.!?]+(?=\s)|\Z)", re.DOTALL)

Line = tuple[int, str]
"""(1-based line number in the source file, the line's text)."""


@dataclass
class Chunk:
    """A piece of a source file: the text and the lines it spans (1-based, inclusive)."""

    text: str
    line: int
    end_line: int


def expand_sources(sources: list[Path]) -> dict[Path, str]:
    """Files to index -> the label shown for them: each file given (labelled by its name), and every supported file
    under each folder given (recursive, sorted; labelled by its path from the folder's parent, e.g. docs/guide.md)."""
    files: dict[Path, str] = {}
    for source in sources:
        source = Path(source)
        if source.is_dir():
            for path in sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES):
                files.setdefault(path.resolve(), path.relative_to(source.parent).as_posix())
        elif source.is_file():
            if source.suffix.lower() not in SUFFIXES:
                raise DataError(
                    f"{source}: unsupported document type `{source.suffix or '(none)'}`",
                    hint=f"Index {', '.join(SUFFIXES)} files.",
                )
            files.setdefault(source.resolve(), source.name)
        else:
            raise DataError(f"{source}: no such file or folder")
    return files


class NotText(DataError):
    """A document that is not UTF-8 text (binary, or another encoding): skipped and counted, never indexed as garbage."""


def read_text(path: Path) -> str:
    """A text document's content. Policy: UTF-8 (a BOM is dropped); a file holding NUL bytes or bytes that are not
    UTF-8 raises NotText naming the first bad offset, since guessing an encoding would index mojibake."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    nul = raw.find(b"\0")
    if nul >= 0:
        raise NotText(f"{path}: binary, not text (a NUL byte at offset {nul})")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NotText(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None


def read_lines(path: Path, problems: list[str] | None = None) -> list[Line]:
    """The text of a source file as numbered lines; unreadable files raise DataError, non-text ones NotText.

    problems: rows left out of a JSONL document are appended here as "path:line: reason".
    """
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        try:
            return _pdf_lines(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read: {exc}") from None
    text = read_text(path)
    if suffix in (".html", ".htm"):
        return _html_lines(text)
    if suffix == ".jsonl":
        return _jsonl_lines(text, path, problems if problems is not None else [])
    return list(enumerate(text.splitlines(), start=1))


def _pdf_lines(path: Path) -> list[Line]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    out: list[Line] = []
    try:
        for page_no, page in enumerate(PdfReader(str(path)).pages, start=1):
            out.append((page_no, SECTION_BREAK))
            out += [(page_no, line) for line in (page.extract_text() or "").splitlines()]
    except PyPdfError as exc:
        raise DataError(f"{path}: not a readable PDF: {exc}") from None
    return out


class _TextParser(HTMLParser):
    """Visible text with its source line; block elements end a paragraph, headings start a section."""

    BLOCKS = frozenset({"p", "div", "li", "ul", "ol", "br", "tr", "table", "section", "article", "pre", "blockquote", "dd", "dt"})
    HIDDEN = frozenset({"script", "style", "noscript", "template", "head"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[Line] = []
        self.hidden = 0
        self.current: tuple[int, list[str]] | None = None

    def _flush(self) -> None:
        if self.current and "".join(self.current[1]).strip():
            self.lines += [(self.current[0], " ".join("".join(self.current[1]).split())), (self.current[0], "")]
        self.current = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS or re.fullmatch(r"h[1-6]", tag):
            self._flush()
            if tag[0] == "h" and tag[1:].isdigit():
                self.current = (self.getpos()[0], ["# "])

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS or re.fullmatch(r"h[1-6]", tag):
            self._flush()

    def handle_data(self, data: str) -> None:
        if self.hidden or not data.strip() and self.current is None:
            return
        if self.current is None:
            # getpos() is where this text node starts; its leading blank lines come before the words
            self.current = (self.getpos()[0] + data[: len(data) - len(data.lstrip())].count("\n"), [])
        self.current[1].append(data)


def _html_lines(text: str) -> list[Line]:
    parser = _TextParser()
    parser.feed(text)
    parser.close()
    parser._flush()
    return parser.lines


def _row_text(obj: object) -> str:
    if isinstance(obj, str):
        return obj
    if not isinstance(obj, dict):
        return ""
    for key in ("text", "content", "body", "document"):
        if isinstance(obj.get(key), str):
            return str(obj[key])
    if isinstance(obj.get("messages"), list):
        return "\n".join(str(m.get("content") or "") for m in obj["messages"] if isinstance(m, dict))
    return "\n".join(v for v in obj.values() if isinstance(v, str))


def _jsonl_lines(text: str, path: Path, problems: list[str]) -> list[Line]:
    out: list[Line] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            body = _row_text(parse_json(raw))
        except ValueError as exc:
            if str(exc) == TOO_DEEP:  # brackets, not text: left out and counted
                problems.append(f"{path}:{number}: {TOO_DEEP}, row left out")
                continue
            body = raw  # a malformed row is still text worth finding
        out.append((number, SECTION_BREAK))
        out += [(number, line) for line in body.splitlines()]
    return out


def _units(lines: list[Line]) -> Iterator[tuple[int, int, str, bool]]:
    """(line, end_line, sentence, starts_section) for every sentence; headings are their own unit."""
    para: list[Line] = []
    new_section = False

    def flush() -> Iterator[tuple[int, int, str, bool]]:
        nonlocal new_section
        if not para:
            return
        joined = "\n".join(text for _, text in para)
        pos, index = 0, 0  # newlines are counted forward from the previous sentence: linear in the paragraph's length
        for m in _SENTENCE.finditer(joined):
            index += joined.count("\n", pos, m.start())
            end_index = index + joined.count("\n", m.start(), m.end())
            yield para[index][0], para[end_index][0], " ".join(m.group().split()), new_section
            pos, index, new_section = m.end(), end_index, False
        para.clear()

    for number, text in lines:
        if text == SECTION_BREAK or _HEADING.match(text):
            yield from flush()
            new_section = True
            if text != SECTION_BREAK:
                yield number, number, " ".join(text.split()), True
                new_section = False
        elif not text.strip():
            yield from flush()
        else:
            para.append((number, text))
    yield from flush()


def _split_long(unit: tuple[int, int, str, bool], limit: int) -> Iterator[tuple[int, int, str, bool]]:
    """A sentence longer than `limit` characters, cut at spaces (or hard, for unbroken text)."""
    line, end, text, section = unit
    start = 0
    while len(text) - start > limit:
        cut = text.rfind(" ", start, start + limit)
        cut = cut if cut > start + limit // 2 else start + limit
        yield line, end, text[start:cut].strip(), section
        start, section = cut, False
        while start < len(text) and text[start] == " ":
            start += 1
    if start < len(text):
        yield line, end, text[start:], section


def chunk_lines(lines: list[Line], chunk_chars: int, overlap_chars: int) -> list[Chunk]:
    """Pack sentences into chunks of at most `chunk_chars` characters; a heading or section break starts a new chunk.

    Consecutive chunks of one section share their last sentences, up to `overlap_chars` characters, so a fact
    cut by a boundary is whole in one of them.
    """
    if chunk_chars < 32 or not 0 <= overlap_chars < chunk_chars:
        raise DataError(f"chunk_chars must be >= 32 and 0 <= overlap_chars < chunk_chars (got {chunk_chars}, {overlap_chars})")
    chunks: list[Chunk] = []
    current: list[tuple[int, int, str]] = []

    def size(units: list[tuple[int, int, str]]) -> int:
        return sum(len(u[2]) + 1 for u in units)

    def emit() -> None:
        chunks.append(Chunk(" ".join(u[2] for u in current), current[0][0], max(u[1] for u in current)))

    for raw in _units(lines):
        for line, end, text, section in _split_long(raw, chunk_chars):
            if current and (section or size(current) + len(text) + 1 > chunk_chars):
                emit()
                tail: list[tuple[int, int, str]] = []
                if not section:  # overlap: the last sentences that fit in overlap_chars (never the whole chunk)
                    for unit in reversed(current[1:]):
                        if size(tail) + len(unit[2]) + 1 + len(text) + 1 > min(overlap_chars + len(text) + 1, chunk_chars):
                            break
                        tail.insert(0, unit)
                current = tail
            current.append((line, end, text))
    if current:
        emit()
    return chunks

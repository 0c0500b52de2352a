"""Load the customer directory from CSV or YAML, chosen by the file suffix.

A bad row stops the import with an error that names the file, the row and the
field, so the person maintaining the spreadsheet can fix it without reading code.

Spreadsheets are saved in whatever encoding the desktop uses, so the text
encoding is detected (:func:`decode_directory`): a byte-order mark (UTF-8,
UTF-16 as Excel's "Unicode text", UTF-32), else UTF-8, else GB18030 (a superset
of the GBK a Chinese Excel saves "CSV" in).  Tab- and semicolon-separated
files are recognised by their header line.

A number that several customers list is not an error here: the store leaves it
unmatched (see :func:`cti.directory.store.shared_numbers`).
"""

from __future__ import annotations

import codecs
import csv
import io
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cti.directory.models import Customer

__all__ = [
    "CSV_COLUMNS",
    "DirectoryEncodingError",
    "DirectoryImportError",
    "LoadedDirectory",
    "decode_directory",
    "load_customers",
    "load_directory",
    "parse_csv",
    "parse_yaml",
]

CSV_COLUMNS = tuple(Customer.model_fields)
_OPTIONAL_BLANK_IS_NONE = frozenset({"company", "company_tier", "role", "account_manager"})
_TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
_YAML_SUFFIXES = (".yaml", ".yml")
#: Longest first: a UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)
#: Tried in order when there is no byte-order mark.
_GUESSED_ENCODINGS = ("utf-8", "gb18030")


class DirectoryImportError(ValueError):
    """The directory file cannot be imported; the message says where and why."""


class DirectoryEncodingError(DirectoryImportError):
    """The file's text encoding is not the one named, or could not be detected."""


@dataclass(frozen=True, slots=True)
class LoadedDirectory:
    customers: list[Customer]
    encoding: str  # the codec the file was decoded with (detected or given)


def load_customers(path: Path | str, *, encoding: str | None = None) -> list[Customer]:
    return load_directory(path, encoding=encoding).customers


def load_directory(path: Path | str, *, encoding: str | None = None) -> LoadedDirectory:
    """Read, decode (``encoding`` or detected) and validate a .csv/.tsv/.txt table or a .yaml/.yml list."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _TABLE_SUFFIXES + _YAML_SUFFIXES:
        hint = "; save the sheet from Excel as CSV" if suffix in (".xlsx", ".xls", ".ods", ".numbers") else ""
        raise DirectoryImportError(f"{path}: unknown directory format {suffix!r} "
                                   f"(use .csv, .tsv, .yaml or .yml){hint}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DirectoryImportError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    text, used = decode_directory(data, source=str(path), encoding=encoding)
    if suffix in _TABLE_SUFFIXES:
        return LoadedDirectory(parse_csv(text, source=str(path)), used)
    return LoadedDirectory(parse_yaml(text, source=str(path)), used)


def decode_directory(data: bytes, *, source: str = "<directory>", encoding: str | None = None) -> tuple[str, str]:
    """The text of a directory file and the codec that decoded it; a leading BOM is never part of the text."""
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DirectoryEncodingError(f"{source}: unknown encoding {encoding!r}") from None
        try:
            return data.decode(encoding).removeprefix("\ufeff"), encoding
        except UnicodeDecodeError as exc:
            raise DirectoryEncodingError(f"{source}: not valid {encoding}: byte 0x{data[exc.start]:02x} at "
                                         f"offset {exc.start}") from None
    if data.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
        raise DirectoryImportError(f"{source}: this is an Excel workbook, not a CSV: "
                                   f"save the sheet from Excel as CSV (UTF-8) first")
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec).removeprefix("\ufeff"), codec
            except UnicodeDecodeError as exc:
                raise DirectoryEncodingError(f"{source}: starts with a {codec.upper()} byte-order mark but is "
                                             f"not valid {codec.upper()} at offset {exc.start}") from None
    candidates = list(_GUESSED_ENCODINGS)
    if b"\x00" in data:
        # UTF-16 without a mark: ASCII text has a NUL in every other byte (which UTF-8 would accept).
        sample = data[:4096]
        candidates = ["utf-16-le"] if sample[1::2].count(0) > len(sample) // 4 else (
            ["utf-16-be"] if sample[0::2].count(0) > len(sample) // 4 else [])
    for codec in candidates:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        if "\x00" not in text and (codec != "gb18030" or _looks_chinese(text)):
            return text, codec
    raise DirectoryEncodingError(f"{source}: cannot tell its text encoding (it is not UTF-8, UTF-16 or GB18030); "
                                 f"save it as CSV UTF-8")


def _looks_chinese(text: str) -> bool:
    """GB18030 decodes most byte strings, Latin-1 ones too (``é`` then ``l`` is a rare hanzi). Chinese text is
    mostly common characters (the GB2312 set); a decoding that is mostly rare ones was not Chinese."""
    counts = Counter(c for c in text if c > "\x7f")
    common = sum(n for c, n in counts.items() if _in_gb2312(c))
    return common * 2 >= sum(counts.values())


def _in_gb2312(char: str) -> bool:
    try:
        char.encode("gb2312")
    except UnicodeEncodeError:
        return False
    return True


def _delimiter(text: str) -> str:
    """Comma, or the tab / semicolon the header line uses instead (Excel's "Unicode text", European CSV)."""
    header = text.split("\n", 1)[0]
    if "," in header:
        return ","
    if "\t" in header:
        return "\t"
    return ";" if ";" in header else ","


def parse_csv(text: str, *, source: str = "<csv>") -> list[Customer]:
    """A header row of :data:`CSV_COLUMNS` names in any order; ``;`` separates several numbers in one cell.

    Cells are comma-separated, or tab- or semicolon-separated when the header line has no comma.
    """
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    header = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = header
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if unknown:
        raise DirectoryImportError(f"{source}: line 1: unknown column(s) {', '.join(unknown)}; "
                                   f"known: {', '.join(CSV_COLUMNS)}")

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        for row in reader:
            if None in row:
                raise DirectoryImportError(f"{source}: line {reader.line_num}: more cells than header columns")
            cleaned: dict[str, Any] = {}
            for key, cell in row.items():
                value = (cell or "").strip()
                if value == "" and (key in _OPTIONAL_BLANK_IS_NONE or key == "vip_tier"):
                    continue  # blank means "none" / the default, not an empty string
                cleaned[key] = value
            if not any(cleaned.values()):
                continue  # blank line
            yield f"line {reader.line_num}", cleaned

    return _validate(rows(), source)


def parse_yaml(text: str, *, source: str = "<yaml>") -> list[Customer]:
    """A list of mappings, or ``{customers: [...]}``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DirectoryImportError(f"{source}: not valid YAML: {exc}") from exc
    if data is None:
        return []
    if isinstance(data, dict) and set(data) == {"customers"}:
        data = data["customers"] or []
    if not isinstance(data, list):
        raise DirectoryImportError(f"{source}: expected a list of customers or {{customers: [...]}}, "
                                   f"not {type(data).__name__}")

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        for index, item in enumerate(data):
            if not isinstance(item, dict):
                raise DirectoryImportError(f"{source}: customers[{index}]: expected a mapping, "
                                           f"not {type(item).__name__}")
            yield f"customers[{index}]", item

    return _validate(rows(), source)


def _validate(rows: Iterable[tuple[str, dict[str, Any]]], source: str) -> list[Customer]:
    customers: list[Customer] = []
    ids: dict[str, str] = {}
    for where, row in rows:
        label = f"{where} (id {row['id']!r})" if row.get("id") else where
        try:
            customer = Customer.model_validate(row)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "(row)"
            more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            raise DirectoryImportError(f"{source}: {label}: field {field}: {err['msg']}{more}") from exc
        if customer.id in ids:
            raise DirectoryImportError(f"{source}: {label}: field id: duplicate of {ids[customer.id]}")
        ids[customer.id] = where
        customers.append(customer)
    return customers

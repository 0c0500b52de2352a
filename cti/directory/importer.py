"""Load the customer directory from CSV or YAML, chosen by the file suffix.

A bad row stops the import with an error that names the file, the row and the
field, so the person maintaining the spreadsheet can fix it without reading code.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cti.directory.models import Customer

__all__ = ["CSV_COLUMNS", "DirectoryImportError", "load_customers", "parse_csv", "parse_yaml"]

CSV_COLUMNS = tuple(Customer.model_fields)
_OPTIONAL_BLANK_IS_NONE = frozenset({"company", "company_tier", "role", "account_manager"})


class DirectoryImportError(ValueError):
    """The directory file cannot be imported; the message says where and why."""


def load_customers(path: Path | str) -> list[Customer]:
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets like to prepend a BOM
    except OSError as exc:
        raise DirectoryImportError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if suffix == ".csv":
        return parse_csv(text, source=str(path))
    if suffix in (".yaml", ".yml"):
        return parse_yaml(text, source=str(path))
    raise DirectoryImportError(f"{path}: unknown directory format {suffix!r} (use .csv, .yaml or .yml)")


def parse_csv(text: str, *, source: str = "<csv>") -> list[Customer]:
    """A header row of :data:`CSV_COLUMNS` names in any order; ``;`` separates several numbers in one cell."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
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
    owners: dict[str, str] = {}
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
        for number in customer.numbers:
            if number in owners:
                raise DirectoryImportError(f"{source}: {label}: field numbers: {number} already belongs to "
                                           f"customer {owners[number]!r}")
            owners[number] = customer.id
        customers.append(customer)
    return customers

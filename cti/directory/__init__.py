"""Customer directory: import from CSV/YAML, store in Redis, look up callers by number."""

from cti.directory.importer import DirectoryImportError, load_customers
from cti.directory.models import Customer
from cti.directory.numbers import normalise_number
from cti.directory.store import RedisDirectory

__all__ = ["Customer", "DirectoryImportError", "RedisDirectory", "load_customers", "normalise_number"]

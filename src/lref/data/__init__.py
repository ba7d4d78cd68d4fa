"""Labelled query–product data: canonical records, readers, dataset adapters and query-level splits."""

from lref.data.adapters import FORMATS, default_scheme, load_records
from lref.data.readers import write_records
from lref.data.records import DataError, Record, stable_id
from lref.data.splits import describe_records, normalise_query, split_by_query

__all__ = [
    "FORMATS",
    "DataError",
    "Record",
    "default_scheme",
    "describe_records",
    "load_records",
    "normalise_query",
    "split_by_query",
    "stable_id",
    "write_records",
]

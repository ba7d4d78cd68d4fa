"""Adapters for public relevance datasets, and `load_records`, the one entry point for every source.

Each adapter reads the dataset's own layout and returns canonical Records. Row numbers in errors are 1-based data
rows of the file named in the error (the row after the header is row 1).
"""

from __future__ import annotations

import contextvars
import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lref.data.readers import (
    GENERIC_FORMATS,
    IdChecker,
    build_record,
    check_parquet_schema,
    detect_format,
    is_empty,
    parse_number,
    read_csv_frame,
    read_generic,
    read_parquet_schema,
    read_parquet_table,
    require_columns,
)
from lref.data.records import DataError, Record
from lref.labels import LabelScheme, get_scheme

# ---------------------------------------------------------------------------------------------------------------
# Home Depot (Kaggle "Home Depot Product Search Relevance").

HOMEDEPOT_COLUMNS = ("id", "product_uid", "product_title", "search_term", "relevance")


def homedepot_grade(mean_relevance: float) -> str:
    """graded3 name for a Home Depot mean rating (1 = irrelevant, 2 = partial, 3 = perfect)."""
    if mean_relevance < 1.5:
        return "Irrelevant"
    if mean_relevance < 2.5:
        return "Partial"
    return "Exact"


def _sniff_utf8_or_latin1(path: Path) -> str:
    # The Kaggle originals are latin-1, but re-saved copies are UTF-8; decoding UTF-8 as latin-1 would garble
    # every non-ASCII title, so take UTF-8 whenever the whole file is valid UTF-8.
    try:
        path.read_bytes().decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        return "latin-1"


def load_homedepot(path: str | os.PathLike, *, scheme: LabelScheme, encoding: str | None = None) -> list[Record]:
    """Home Depot CSV (`id, product_uid, product_title, search_term, relevance`).

    `relevance`, the mean of several raters on 1–3, becomes `raw_score` and a graded3 label (< 1.5 Irrelevant,
    [1.5, 2.5) Partial, >= 2.5 Exact). `meta` keeps `product_uid` and `rater_disagreement` (the mean is not a whole
    number). A file without `relevance` (Kaggle's test.csv) loads unlabelled. `encoding=None` reads UTF-8 when
    the file is valid UTF-8 and latin-1 otherwise.
    """
    path = Path(path)
    frame = read_csv_frame(path, encoding=encoding or _sniff_utf8_or_latin1(path))
    require_columns(frame.columns, [c for c in HOMEDEPOT_COLUMNS if c != "relevance"], path=path)  # test.csv has none
    labelled = "relevance" in frame.columns
    if labelled:
        relevance = pd.to_numeric(frame["relevance"].str.strip(), errors="coerce").to_numpy(dtype=float)
        bad = ~((relevance >= 1.0) & (relevance <= 3.0))  # also catches NaN from non-numeric cells
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(
                f"relevance must be a number from 1 to 3, got {frame['relevance'].iloc[row]!r}",
                path=str(path),
                row=row + 1,
                column="relevance",
            )
    sources = {
        "id": "id",
        "query": "search_term",
        "title": "product_title",
        "label": "relevance",
        "raw_score": "relevance",
    }
    ids = IdChecker(path)
    records = []
    for index, (pair_id, product_uid, title, query) in enumerate(
        zip(frame["id"], frame["product_uid"], frame["product_title"], frame["search_term"], strict=True)
    ):
        row = index + 1
        fields: dict[str, Any] = {"id": pair_id, "query": query, "title": title}
        meta: dict[str, Any] = {"product_uid": product_uid.strip()}
        if labelled:
            mean = float(relevance[index])
            fields.update(label=homedepot_grade(mean), raw_score=mean)
            meta["rater_disagreement"] = not mean.is_integer()
        record = build_record(
            fields, path=path, row=row, scheme=scheme, labelled=labelled, sources=sources, extra_meta=meta
        )
        ids.check(record.id, row)
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------------------------
# Amazon Shopping Queries (ESCI).

ESCI_EXAMPLES_FILE = "shopping_queries_dataset_examples.parquet"
ESCI_PRODUCTS_FILE = "shopping_queries_dataset_products.parquet"
ESCI_LABELS = {"E": "Exact", "S": "Substitute", "C": "Complement", "I": "Irrelevant"}
_ESCI_EXAMPLE_TYPES = {
    "example_id": "id",
    "query": "string",
    "query_id": "id",
    "product_id": "string",
    "product_locale": "string",
    "esci_label": "string",
    "small_version": "integer",
    "large_version": "integer",
    "split": "string",
}
_ESCI_PRODUCT_TYPES = {
    "product_id": "string",
    "product_locale": "string",
    "product_title": "string",
    "product_description": "string",
    "product_bullet_point": "string",
    "product_brand": "string",
    "product_color": "string",
}


def _esci_paths(path: Path, products: str | os.PathLike | None) -> tuple[Path, Path]:
    examples = path / ESCI_EXAMPLES_FILE if path.is_dir() else path
    products_path = Path(products) if products is not None else examples.parent / ESCI_PRODUCTS_FILE
    for needed in (examples, products_path):
        if not needed.is_file():
            raise FileNotFoundError(f"ESCI file not found: {needed}")
    return examples, products_path


def load_esci(
    path: str | os.PathLike,
    *,
    scheme: LabelScheme,
    locale: str | None = "us",
    split: str | None = None,
    version: str | None = "small",
    products: str | os.PathLike | None = None,
) -> list[Record]:
    """Amazon ESCI: the examples Parquet joined with the products Parquet on product_id + product_locale.

    `path` is the examples file or the folder holding both official files; `products` overrides the products
    file. Filters: `locale` ("us", "es", "jp" or None for all), `split` ("train", "test" or None) and `version`
    ("small" = the reduced Task 1 set, "large", or None for every row). E/S/C/I become esci4 names.
    """
    if version not in (None, "small", "large"):
        raise DataError(f"version must be 'small', 'large' or None, got {version!r}", path=str(path))
    examples_path, products_path = _esci_paths(Path(path), products)
    required = ["example_id", "query", "product_id", "product_locale", "esci_label"]
    required += ["split"] if split is not None else []
    required += [f"{version}_version"] if version is not None else []
    schema = read_parquet_schema(examples_path)
    check_parquet_schema(examples_path, schema, _ESCI_EXAMPLE_TYPES, required=required)
    product_schema = read_parquet_schema(products_path)
    check_parquet_schema(
        products_path, product_schema, _ESCI_PRODUCT_TYPES, required=["product_id", "product_locale", "product_title"]
    )

    examples = read_parquet_table(examples_path, [c for c in _ESCI_EXAMPLE_TYPES if c in schema.names])
    examples = examples.append_column("_row", pa.array(np.arange(1, examples.num_rows + 1)))
    filters = {"product_locale": locale, "split": split, f"{version}_version": 1 if version else None}
    for column, wanted in filters.items():
        if wanted is not None:
            examples = examples.filter(pc.equal(examples[column], wanted))
    if examples.num_rows == 0:
        raise DataError(
            f"no examples match locale={locale!r}, split={split!r}, version={version!r}", path=str(examples_path)
        )

    product_table = read_parquet_table(products_path, [c for c in _ESCI_PRODUCT_TYPES if c in product_schema.names])
    product_table = product_table.append_column("_product_row", pa.array(np.arange(1, product_table.num_rows + 1)))
    if locale is not None:
        product_table = product_table.filter(pc.equal(product_table["product_locale"], locale))
    product_frame = product_table.to_pandas()
    duplicated = product_frame.duplicated(["product_id", "product_locale"])
    if duplicated.any():
        first = product_frame[duplicated].iloc[0]
        raise DataError(
            f"product {first['product_id']!r} ({first['product_locale']}) appears twice",
            path=str(products_path),
            row=int(first["_product_row"]),
            column="product_id",
        )
    # A left merge keeps the examples' order.
    joined = examples.to_pandas().merge(product_frame, on=["product_id", "product_locale"], how="left", sort=False)

    sources = {"id": "example_id", "query": "query", "label": "esci_label"}
    ids = IdChecker(examples_path, column="example_id")
    records = []
    for item in joined.to_dict("records"):
        row = int(item["_row"])
        if is_empty(item.get("_product_row")):
            raise DataError(
                f"no product {item['product_id']!r} for locale {item['product_locale']!r} in {products_path}",
                path=str(examples_path),
                row=row,
                column="product_id",
            )
        if is_empty(item.get("product_title")):
            raise DataError(
                "empty title", path=str(products_path), row=int(item["_product_row"]), column="product_title"
            )
        raw_label = item["esci_label"]
        fields = {
            "id": item["example_id"],
            "query": item["query"],
            "title": item["product_title"],
            "label": ESCI_LABELS.get(raw_label.strip().upper(), raw_label) if isinstance(raw_label, str) else raw_label,
            "brand": item.get("product_brand"),
            "description": item.get("product_description"),
            "attributes": {"color": item.get("product_color"), "bullet_points": item.get("product_bullet_point")},
        }
        meta = {"product_id": item["product_id"], "locale": item["product_locale"]}
        for key in ("query_id", "split"):
            if not is_empty(item.get(key)):
                meta[key] = item[key]
        record = build_record(
            fields, path=examples_path, row=row, scheme=scheme, labelled=True, sources=sources, extra_meta=meta
        )
        ids.check(record.id, row)
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------------------------
# Wayfair WANDS.


def _wands_features(text: str) -> dict[str, str]:
    # WANDS packs features as "name:value|name:value".
    features = {}
    for part in text.split("|"):
        name, _, value = part.partition(":")
        if name.strip() and value.strip():
            features[name.strip()] = value.strip()
    return features


def _index_rows(frame: pd.DataFrame, key: str, path: Path) -> dict[str, tuple[int, dict[str, str]]]:
    index: dict[str, tuple[int, dict[str, str]]] = {}
    for row, item in enumerate(frame.to_dict("records"), start=1):
        value = item[key].strip()
        if value in index:
            raise DataError(
                f"duplicate {key} {value!r} (first seen in row {index[value][0]})", path=str(path), row=row, column=key
            )
        index[value] = (row, item)
    return index


def load_wands(path: str | os.PathLike, *, scheme: LabelScheme) -> list[Record]:
    """Wayfair WANDS: the folder with tab-separated query.csv, product.csv and label.csv.

    Labels (Exact/Partial/Irrelevant) are graded3. The product's features, class and category go into
    `attributes`; `meta` keeps query_id, product_id and query_class.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError("expected the WANDS folder holding query.csv, product.csv and label.csv", path=str(folder))
    query_path, product_path, label_path = (folder / name for name in ("query.csv", "product.csv", "label.csv"))
    query_frame = read_csv_frame(query_path, sep="\t")
    require_columns(query_frame.columns, ("query_id", "query"), path=query_path)
    product_frame = read_csv_frame(product_path, sep="\t")
    require_columns(product_frame.columns, ("product_id", "product_name"), path=product_path)
    label_frame = read_csv_frame(label_path, sep="\t")
    require_columns(label_frame.columns, ("id", "query_id", "product_id", "label"), path=label_path)
    queries = _index_rows(query_frame, "query_id", query_path)
    products = _index_rows(product_frame, "product_id", product_path)

    ids = IdChecker(label_path)
    records = []
    for row, item in enumerate(label_frame.to_dict("records"), start=1):
        query_id, product_id = item["query_id"].strip(), item["product_id"].strip()
        if query_id not in queries:
            raise DataError(
                f"query_id {query_id!r} is not in {query_path.name}", path=str(label_path), row=row, column="query_id"
            )
        if product_id not in products:
            raise DataError(
                f"product_id {product_id!r} is not in {product_path.name}",
                path=str(label_path),
                row=row,
                column="product_id",
            )
        query_row, query = queries[query_id]
        product_row, product = products[product_id]
        if is_empty(query["query"]):
            raise DataError("empty query", path=str(query_path), row=query_row, column="query")
        if is_empty(product["product_name"]):
            raise DataError("empty title", path=str(product_path), row=product_row, column="product_name")
        attributes = _wands_features(product.get("product_features", ""))
        attributes.setdefault("product_class", product.get("product_class", ""))
        attributes.setdefault("category", product.get("category hierarchy", ""))
        meta = {"query_id": query_id, "product_id": product_id}
        if not is_empty(query.get("query_class")):
            meta["query_class"] = query["query_class"].strip()
        fields = {
            "id": item["id"],
            "query": query["query"],
            "title": product["product_name"],
            "label": item["label"],
            "description": product.get("product_description"),
            "attributes": attributes,
        }
        record = build_record(fields, path=label_path, row=row, scheme=scheme, labelled=True, extra_meta=meta)
        ids.check(record.id, row)
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------------------------
# CrowdFlower (Kaggle "Search Results Relevance").


def load_crowdflower(path: str | os.PathLike, *, scheme: LabelScheme, encoding: str = "utf-8") -> list[Record]:
    """CrowdFlower CSV (`id, query, product_title, product_description, median_relevance, relevance_variance`).

    `median_relevance` (1–4) is the crowdflower4 label and `raw_score`; `meta` keeps `relevance_variance`. A file
    without `median_relevance` (Kaggle's test.csv) loads unlabelled.
    """
    path = Path(path)
    frame = read_csv_frame(path, encoding=encoding)
    require_columns(frame.columns, ("id", "query", "product_title"), path=path)
    labelled = "median_relevance" in frame.columns
    sources = {
        "query": "query",
        "title": "product_title",
        "description": "product_description",
        "label": "median_relevance",
        "raw_score": "median_relevance",
    }
    ids = IdChecker(path)
    records = []
    for row, item in enumerate(frame.to_dict("records"), start=1):
        fields = {
            "id": item["id"],
            "query": item["query"],
            "title": item["product_title"],
            "description": item.get("product_description"),
        }
        meta = {}
        if labelled:
            median = item["median_relevance"].strip()
            fields["label"] = median  # anything but a whole number 1-4 is refused by the scheme
            try:
                number = float(median)
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                fields.update(label=str(int(number)), raw_score=number)
        if not is_empty(item.get("relevance_variance")):
            meta["relevance_variance"] = parse_number(
                item["relevance_variance"], path=path, row=row, column="relevance_variance"
            )
        record = build_record(
            fields, path=path, row=row, scheme=scheme, labelled=labelled, sources=sources, extra_meta=meta
        )
        ids.check(record.id, row)
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------------------------
# One entry point.

ADAPTERS: dict[str, Callable[..., list[Record]]] = {
    "homedepot": load_homedepot,
    "esci": load_esci,
    "wands": load_wands,
    "crowdflower": load_crowdflower,
}
FORMATS = ("auto", *GENERIC_FORMATS, *ADAPTERS)
_NATURAL_SCHEMES = {"homedepot": "graded3", "esci": "esci4", "wands": "graded3", "crowdflower": "crowdflower4"}


def default_scheme(format: str) -> LabelScheme:
    """The label scheme a format's labels naturally use; generic files (and "auto") default to graded3."""
    fmt = format.lower()
    if fmt not in FORMATS:
        raise DataError(f"unknown format {format!r} (expected one of {', '.join(FORMATS)})")
    return get_scheme(_NATURAL_SCHEMES.get(fmt, "graded3"))


def load_records(
    path: str | os.PathLike,
    format: str = "auto",
    scheme: LabelScheme | str | None = None,
    columns: Mapping[str, str] | None = None,
    **options: Any,
) -> list[Record]:
    """Load canonical Records from a generic file or a public dataset.

    `format` is "auto" (by extension: .jsonl/.json, .csv/.tsv, .parquet), "jsonl", "csv", "parquet", or a dataset
    adapter: "homedepot", "esci", "wands", "crowdflower". `scheme` (a LabelScheme or preset name) validates the
    labels; None takes `default_scheme(format)`. `columns` maps canonical field -> source column for generic
    files. `options` go to the reader: `encoding`, `sep` (generic), `encoding` (homedepot, crowdflower),
    `locale`, `split`, `version`, `products` (esci).

    A generic file without a label column loads unlabelled (label=None); an empty label in a labelled file is an
    error. Bad input raises DataError naming the file, the 1-based data row and the column. An adapter (an entry of
    `ADAPTERS`) that calls `load_records` on its own input with its own format, directly or through other adapters,
    raises a DataError naming the chain of adapters.
    """
    fmt = format.lower()
    resolved_scheme = get_scheme(scheme) if scheme is not None else default_scheme(fmt)
    if not Path(path).exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if fmt == "auto":
        fmt = detect_format(path)
    chain = _LOADING.get()
    step = (fmt, str(Path(path).resolve()))
    if step in chain:
        names = " -> ".join(f"{name} ({where})" for name, where in (*chain, step))
        raise DataError(f"adapter cycle: {names}; an adapter must not load its own input through itself",
                        path=str(path))
    token = _LOADING.set((*chain, step))
    try:
        return _load(path, fmt, resolved_scheme, columns, options)
    finally:
        _LOADING.reset(token)


_LOADING: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar("lref_loading", default=())
"""The (format, file) pairs `load_records` is reading in this context, outermost first: an adapter that loads its
own input through itself (directly or via other adapters) is refused instead of recursing without end."""


def _load(path, fmt: str, resolved_scheme: LabelScheme, columns, options: dict[str, Any]) -> list[Record]:
    if fmt in GENERIC_FORMATS:
        return read_generic(
            path, fmt, scheme=resolved_scheme, columns=columns, **_checked_options(read_generic, fmt, options, path)
        )
    if columns:
        raise DataError(f"columns= applies to jsonl, csv and parquet files, not to format {fmt!r}", path=str(path))
    loader = ADAPTERS[fmt]
    return loader(path, scheme=resolved_scheme, **_checked_options(loader, fmt, options, path))


def _checked_options(
    loader: Callable[..., Any], fmt: str, options: dict[str, Any], path: str | os.PathLike
) -> dict[str, Any]:
    """Refuse options the chosen reader does not take, listing those it does."""
    parameters = inspect.signature(loader).parameters.items()
    accepted = [name for name, p in parameters if p.kind is p.KEYWORD_ONLY and name not in ("scheme", "columns")]
    unknown = [name for name in options if name not in accepted]
    if unknown:
        raise DataError(
            f"option {unknown[0]!r} is not understood by format {fmt!r} (options: {', '.join(accepted) or 'none'})",
            path=str(path),
        )
    return options

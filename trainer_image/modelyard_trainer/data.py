"""Loading, cleaning, splitting and fitting the preprocessing (numpy and pandas; no torch).

The result keeps raw feature values (NaN for missing numbers, "" for missing strings): the
fitted transforms are applied by a torch module (transforms.py) that is also exported into the
ONNX model, so training and serving run the very same preprocessing on raw features.

The file that data.source.uri names is found by the storage package (no `..`, and it stays in
its claim) and capped at MODELYARD_MAX_DATA_BYTES. Errors never quote the file's content (it
may be any file the pod can read): columns are named only when the spec names them, else
counted or numbered.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from modelyard_storage.errors import StorageError
from modelyard_storage.local import local_path
from modelyard_storage.store import (
    DEFAULT_MAX_DATA_BYTES,
    ENV_MAX_DATA_BYTES,
    byte_limit,
    open_store,
)
from modelyard_storage.uri import is_s3

from .config import DataConfig, SyntheticTask
from .errors import InvalidConfig
from .mirror import storage_failure

MAX_CATEGORIES = 1000


@dataclass
class Part:
    """One split: raw features and the target."""

    numeric: np.ndarray  # float32 [rows, numeric columns], NaN = missing
    strings: np.ndarray  # object [rows, string columns] of str, "" = missing
    target: np.ndarray  # int64 class index, or float64 target in its own units

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def take(self, rows: np.ndarray) -> Part:
        return Part(self.numeric[rows], self.strings[rows], self.target[rows])


@dataclass
class PreprocessingSpec:
    """Everything fitted on the training rows; plain JSON-able values so checkpoints carry it."""

    task: SyntheticTask
    numeric_columns: list[str] = field(default_factory=list)
    fill: list[float] = field(default_factory=list)  # per numeric column
    continuous: list[int] = field(default_factory=list)  # indices into numeric_columns
    mean: list[float] = field(default_factory=list)  # per continuous column
    scale: list[float] = field(default_factory=list)
    numeric_categorical: list[int] = field(default_factory=list)  # indices into numeric_columns
    numeric_categories: list[list[float]] = field(default_factory=list)
    string_columns: list[str] = field(default_factory=list)
    string_categories: list[list[str]] = field(default_factory=list)
    # Code that a missing string ("") maps to: the training mode when imputing, -1 (all-zero
    # one-hot, like an unseen category) otherwise.
    string_missing_code: list[int] = field(default_factory=list)
    class_labels: list[str] = field(default_factory=list)
    target_mean: float = 0.0
    target_scale: float = 1.0

    @property
    def encoded_width(self) -> int:
        return (
            len(self.continuous)
            + sum(len(categories) for categories in self.numeric_categories)
            + sum(len(categories) for categories in self.string_categories)
        )

    @property
    def outputs(self) -> int:
        return len(self.class_labels) if self.task == "classification" else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessingSpec:
        return cls(**data)

    def string_codes(self, strings: np.ndarray) -> np.ndarray:
        """Category codes of string columns (float32; -1 for an unseen category)."""
        codes = np.full(strings.shape, -1.0, dtype=np.float32)
        for column, categories in enumerate(self.string_categories):
            lookup = {value: float(code) for code, value in enumerate(categories)}
            lookup[""] = float(self.string_missing_code[column])
            codes[:, column] = [lookup.get(value, -1.0) for value in strings[:, column]]
        return codes


@dataclass
class Dataset:
    spec: PreprocessingSpec
    train: Part
    validation: Part
    test: Part
    rows_loaded: int
    rows_clean: int


@dataclass
class _Table:
    frame: pd.DataFrame  # features only
    target: pd.Series
    class_labels: list[str] | None = None  # names of integer class codes, when known


def _load_builtin(name: str) -> _Table:
    from sklearn import datasets

    loaders = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
    }
    bunch = loaders[name]()
    frame = pd.DataFrame(
        np.asarray(bunch.data, dtype=np.float64), columns=list(bunch.feature_names)
    )
    labels = [str(label) for label in bunch.target_names]
    return _Table(frame, pd.Series(np.asarray(bunch.target, dtype=np.int64)), labels)


def _load_synthetic(config: DataConfig) -> _Table:
    from sklearn import datasets

    synthetic = config.source.synthetic
    assert synthetic is not None
    if synthetic.task == "classification":
        features, target = datasets.make_classification(
            n_samples=synthetic.samples,
            n_features=synthetic.features,
            n_informative=synthetic.informative,
            n_redundant=min(2, synthetic.features - synthetic.informative),
            n_classes=synthetic.classes,
            n_clusters_per_class=1,
            flip_y=synthetic.noise,
            random_state=synthetic.seed,
        )
        labels = [str(code) for code in range(synthetic.classes)]
    else:
        features, target = datasets.make_regression(
            n_samples=synthetic.samples,
            n_features=synthetic.features,
            n_informative=synthetic.informative,
            noise=synthetic.noise,
            random_state=synthetic.seed,
        )
        labels = None
    columns = [f"x{index}" for index in range(synthetic.features)]
    return _Table(pd.DataFrame(features, columns=columns), pd.Series(target), labels)


def _load_file(config: DataConfig, pvc_root: str) -> _Table:
    uri = config.source.uri
    assert uri is not None
    field = "data.source.uri"
    try:
        max_bytes = byte_limit(os.environ, ENV_MAX_DATA_BYTES, DEFAULT_MAX_DATA_BYTES)
        if not is_s3(uri):
            path = local_path(uri, pvc_root, field)
            if path.is_file() and path.stat().st_size > max_bytes:
                raise StorageError(
                    "TooLarge",
                    f"{uri} holds more than the limit of {max_bytes} bytes ({ENV_MAX_DATA_BYTES})",
                )
            return _read_file(config, uri, path)
        # Each process downloads its own copy to scratch space, verified, and reads it there.
        with tempfile.TemporaryDirectory(prefix="modelyard-data-") as scratch:
            path = Path(scratch) / (PurePosixPath(uri).name or "data")
            open_store(uri).download(uri, path, max_bytes=max_bytes)
            return _read_file(config, uri, path)
    except StorageError as error:
        if error.reason in ("NotFound", "BucketNotFound", "InvalidUri", "TooLarge"):
            message = error.message
            raise InvalidConfig(
                message if message.startswith(field) else f"{field}: {message}"
            ) from None
        raise storage_failure(error) from None


def _read_file(config: DataConfig, uri: str, path: Path) -> _Table:
    assert config.target is not None
    file_format = config.source.format
    if file_format == "auto":
        suffixes = "".join(path.suffixes).lower()
        if ".parquet" in suffixes or suffixes.endswith(".pq"):
            file_format = "parquet"
        elif ".csv" in suffixes:
            file_format = "csv"
        else:
            raise InvalidConfig(
                f"data.source.format: cannot tell the format of {uri!r} by its extension; "
                "set format to 'csv' or 'parquet'"
            )
    if not path.is_file():
        raise InvalidConfig(f"data.source.uri: no such file {str(path)!r} (from {uri!r})")
    try:
        frame = pd.read_parquet(path) if file_format == "parquet" else pd.read_csv(path)
    except Exception as error:  # pandas raises many types for unreadable files
        # Only the type: the text of a parser's error may quote the line it choked on.
        raise InvalidConfig(
            f"data.source.uri: cannot read {uri!r} as {file_format} ({type(error).__name__})"
        ) from None
    columns = [str(column) for column in frame.columns]
    frame.columns = pd.Index(columns)
    if config.target not in columns:
        # The file's header is never quoted: it may be a file that holds no table at all.
        raise InvalidConfig(
            f"data.target: column {config.target!r} is not in the file "
            f"({uri!r} has {len(columns)} column(s); their names are not shown)"
        )
    missing = [name for name in config.features if name not in columns]
    if missing:
        raise InvalidConfig(f"data.features: columns not in the file: {', '.join(missing)}")
    features = config.features or [name for name in columns if name != config.target]
    if not features:
        raise InvalidConfig("data.features: the file has no feature columns besides the target")
    return _Table(frame[features].copy(), frame[config.target].copy())


def _split_indices(
    rows: int, labels: np.ndarray | None, validation: float, test: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded split; with labels, each class is split on its own (stratified)."""
    rng = np.random.default_rng(seed)
    groups = (
        [np.arange(rows)]
        if labels is None
        else [np.flatnonzero(labels == value) for value in np.unique(labels)]
    )
    train, val, held = [], [], []
    for group in groups:
        shuffled = rng.permutation(group)
        n_test = round(len(shuffled) * test)
        n_val = round(len(shuffled) * validation)
        held.append(shuffled[:n_test])
        val.append(shuffled[n_test : n_test + n_val])
        train.append(shuffled[n_test + n_val :])
    return tuple(np.sort(np.concatenate(part)).astype(np.int64) for part in (train, val, held))  # type: ignore[return-value]


def _most_frequent(values: np.ndarray) -> Any:
    unique, counts = np.unique(values, return_counts=True)
    return unique[int(np.argmax(counts))]


def _number_label(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)


def load_dataset(config: DataConfig, task: SyntheticTask, pvc_root: str) -> Dataset:
    """Load, clean, split and fit the preprocessing on the training rows."""
    source = config.source
    if source.builtin is not None:
        table = _load_builtin(source.builtin)
    elif source.synthetic is not None:
        table = _load_synthetic(config)
    else:
        table = _load_file(config, pvc_root)
    rows_loaded = len(table.frame)
    prep = config.preprocessing

    frame = table.frame.reset_index(drop=True)
    target = table.target.reset_index(drop=True)
    unknown = [name for name in prep.one_hot if name not in frame.columns]
    if unknown:
        raise InvalidConfig(f"data.preprocessing.oneHot: not feature columns: {', '.join(unknown)}")

    numeric_columns: list[str] = []
    string_columns: list[str] = []
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
            frame[name] = column.astype(np.float64)
            numeric_columns.append(name)
        else:
            frame[name] = column.map(lambda value: "" if pd.isna(value) else str(value))
            string_columns.append(name)

    # Cleaning: a row without a target teaches nothing; the rest follows the config.
    keep = target.notna().to_numpy().copy()
    missing_feature = (frame[numeric_columns].isna().any(axis=1) if numeric_columns else False) | (
        (frame[string_columns] == "").any(axis=1) if string_columns else False
    )
    if prep.missing == "drop":
        keep &= ~np.asarray(missing_feature, dtype=bool)
    if prep.drop_duplicates:
        both = frame.assign(__target__=target)
        keep &= ~both.duplicated().to_numpy()
    frame = frame[keep].reset_index(drop=True)
    target = target[keep].reset_index(drop=True)
    rows_clean = len(frame)
    if rows_clean == 0:
        raise InvalidConfig("data: no rows left after cleaning (data.preprocessing.missing)")

    class_labels: list[str] = []
    if task == "classification":
        if table.class_labels is not None:
            class_labels = table.class_labels
            target_values = target.to_numpy(dtype=np.int64)
        else:
            is_number = pd.api.types.is_numeric_dtype(target)
            raw = target.to_numpy()
            unique = np.unique(raw.astype(np.float64) if is_number else raw.astype(str))
            class_labels = [_number_label(v) if is_number else str(v) for v in unique]
            keyed = raw.astype(np.float64) if is_number else raw.astype(str)
            target_values = np.searchsorted(unique, keyed).astype(np.int64)
        if len(class_labels) < 2:
            raise InvalidConfig("data.target: classification needs at least two classes")
        if len(class_labels) > MAX_CATEGORIES:
            raise InvalidConfig(
                f"data.target: {len(class_labels)} classes (max {MAX_CATEGORIES}); "
                "use training.loss 'mse' for a real-valued target"
            )
    else:
        try:
            target_values = pd.to_numeric(target).to_numpy(dtype=np.float64)
        except (ValueError, TypeError):
            raise InvalidConfig(
                "data.target: regression (training.loss 'mse') needs a numeric target"
            ) from None

    numeric = frame[numeric_columns].to_numpy(dtype=np.float32).reshape(rows_clean, -1)
    strings = frame[string_columns].to_numpy(dtype=object).reshape(rows_clean, -1)
    whole = Part(numeric, strings, target_values)

    split = config.split
    stratify = task == "classification" and split.stratify
    train_rows, val_rows, test_rows = _split_indices(
        rows_clean, target_values if stratify else None, split.validation, split.test, split.seed
    )
    if len(train_rows) == 0 or len(test_rows) == 0:
        raise InvalidConfig(
            f"data.split: {rows_clean} rows give {len(train_rows)} training and "
            f"{len(test_rows)} test rows; both must be non-empty"
        )
    train = whole.take(train_rows)
    spec = _fit(train, numeric_columns, string_columns, prep.one_hot, config, task)
    spec.class_labels = class_labels
    return Dataset(
        spec=spec,
        train=train,
        validation=whole.take(val_rows),
        test=whole.take(test_rows),
        rows_loaded=rows_loaded,
        rows_clean=rows_clean,
    )


def _fit(
    train: Part,
    numeric_columns: list[str],
    string_columns: list[str],
    one_hot: list[str],
    config: DataConfig,
    task: SyntheticTask,
) -> PreprocessingSpec:
    strategy = config.preprocessing.missing
    spec = PreprocessingSpec(
        task=task, numeric_columns=numeric_columns, string_columns=string_columns
    )
    for index, name in enumerate(numeric_columns):
        values = train.numeric[:, index].astype(np.float64)
        present = values[~np.isnan(values)]
        categorical = name in one_hot
        if present.size == 0:
            fill = 0.0
        elif categorical or strategy == "most_frequent":
            fill = float(_most_frequent(present))
        elif strategy == "median":
            fill = float(np.median(present))
        else:  # mean; with "drop" the value only serves requests that carry a missing value
            fill = float(present.mean())
        spec.fill.append(fill)
        imputed = np.where(np.isnan(values), fill, values)
        if categorical:
            categories = np.unique(imputed)
            if categories.size > MAX_CATEGORIES:
                raise InvalidConfig(
                    f"data.preprocessing.oneHot: column {name!r} has {categories.size} "
                    f"categories (max {MAX_CATEGORIES})"
                )
            spec.numeric_categorical.append(index)
            spec.numeric_categories.append([float(value) for value in categories])
            continue
        spec.continuous.append(index)
        if config.preprocessing.standardize:
            std = float(imputed.std())
            spec.mean.append(float(imputed.mean()))
            spec.scale.append(std if std > 1e-12 and math.isfinite(std) else 1.0)
        else:
            spec.mean.append(0.0)
            spec.scale.append(1.0)
    for index, name in enumerate(string_columns):
        values = train.strings[:, index]
        present = np.asarray([value for value in values if value != ""], dtype=object)
        names = sorted({str(value) for value in present})
        if len(names) > MAX_CATEGORIES:
            # A column the spec does not name is numbered: its name is the file's content.
            column = (
                repr(name) if name in config.features else f"number {index + 1} of the text ones"
            )
            raise InvalidConfig(
                f"data.features: column {column} has {len(names)} categories "
                f"(max {MAX_CATEGORIES}); drop it or encode it as numbers"
            )
        spec.string_categories.append(names)
        missing_code = -1
        if strategy != "drop" and present.size:
            missing_code = names.index(str(_most_frequent(present.astype(str))))
        spec.string_missing_code.append(missing_code)
    if task == "regression":
        target = train.target.astype(np.float64)
        std = float(target.std())
        spec.target_mean = float(target.mean())
        spec.target_scale = std if std > 1e-12 and math.isfinite(std) else 1.0
    return spec

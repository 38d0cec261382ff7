"""Tensor datatypes and the model's signature as the Open Inference Protocol describes them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# ONNX Runtime's type strings -> OIP datatype names.
ONNX_TO_OIP: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}

# OIP numeric datatypes -> numpy dtypes; the binary extension is little-endian.
OIP_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

ALL_DATATYPES = frozenset(OIP_TO_NUMPY) | {"BYTES", "BF16"}


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of an output array (strings and objects are BYTES)."""
    kind = array.dtype.kind
    if kind in "OSU":
        return "BYTES"
    for name, dtype in OIP_TO_NUMPY.items():
        if array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize:
            return name
    return "BYTES"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output: name, OIP datatype, and shape with -1 for dynamic dimensions."""

    name: str
    datatype: str
    shape: tuple[int, ...] | None  # None: the model does not declare the rank

    @property
    def dtype(self) -> np.dtype | None:
        """The numpy dtype of a numeric tensor; None for BYTES and BF16."""
        return OIP_TO_NUMPY.get(self.datatype)

    def metadata(self) -> dict[str, object]:
        return {
            "name": self.name,
            "datatype": self.datatype,
            "shape": list(self.shape) if self.shape is not None else [-1],
        }


def dims_of(onnx_shape: object) -> tuple[int, ...] | None:
    """ONNX Runtime reports dimensions as ints, symbolic names or None; all but ints are -1."""
    if not isinstance(onnx_shape, list | tuple):
        return None
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in onnx_shape)


@dataclass(frozen=True, slots=True)
class ModelSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Computed once: every request asks.
    _batched: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        batched = all(spec.shape and spec.shape[0] == -1 for spec in self.inputs)
        object.__setattr__(self, "_batched", batched)

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    @property
    def batch_dim_is_dynamic(self) -> bool:
        """Every input has a dynamic first dimension: the precondition for batching."""
        return self._batched

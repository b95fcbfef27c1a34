"""Lazy CT volumes: nothing is read until an array is asked for; ``.nii.gz`` inflates fast (isal) with no transpose.

A :class:`Volume` wraps a local path (``.nii``/``.nii.gz``), raw file bytes, or an fsspec URL (``hf://…``,
``file://…``). Arrays are in nibabel voxel order ``(i, j, k)`` and Fortran-ordered (a view of the decoded file
buffer, as nibabel returns them); :meth:`Volume.tensor` is the zero-copy ``(k, j, i)`` torch view.

HU rules: the rescale (``scl_slope``/``scl_inter`` from the header, or ``rescale=(slope, intercept)`` given
explicitly, which then replaces the header's) is applied exactly once. Integer data stay in their dtype when the
slope is 1, the intercept is integral and the result fits (else int16 if that fits), otherwise float32. Never float64.

>>> import numpy as np
>>> v = Volume.from_array(np.zeros((4, 4, 2), np.int16), np.diag([0.75, 0.75, 1.5, 1.0]), name="train_1_a_1")
>>> v
Volume(name='train_1_a_1', shape=(4, 4, 2), spacing=(0.75, 0.75, 1.5), orientation='RAS', dtype=int16, memory=64 B, loaded=True)
"""

from __future__ import annotations

import ast
import gzip
import io
import math
import os
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import CorruptVolumeError, MalformedFileError, MissingVolumeError, ShapeMismatchError, UnknownAnatomyError
from ..ontology import get_ontology, normalize_name, normalize_path

try:  # isal's igzip inflates ~1.6x faster than zlib; the stdlib is the fallback
    from isal import igzip as _igzip  # type: ignore
except ImportError:  # pragma: no cover
    _igzip = None

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .cache import PreparedCache
    from .masks import PackedMasks

__all__ = ["Volume", "MAX_VOLUME_BYTES", "apply_rescale"]

#: Largest decoded volume accepted (bytes); a header asking for more is treated as corrupt.
MAX_VOLUME_BYTES = int(os.environ.get("RADGENOME_MAX_VOLUME_BYTES", 16 << 30))

_GZ_MAGIC = b"\x1f\x8b"


def _gzip_reader(fileobj_or_path: Any):
    """A gzip reader over a path or file object: isal when importable, else the stdlib."""
    mod = _igzip if _igzip is not None else gzip
    if isinstance(fileobj_or_path, (str, os.PathLike)):
        return mod.GzipFile(os.fspath(fileobj_or_path), "rb")
    return mod.GzipFile(fileobj=fileobj_or_path, mode="rb")


def _readinto_full(f, buf: memoryview) -> int:
    total = 0
    while total < len(buf):
        n = f.readinto(buf[total:])
        if not n:
            break
        total += n
    return total


def _fits(lo: float, hi: float, dtype: np.dtype) -> bool:
    info = np.iinfo(dtype)
    return info.min <= lo and hi <= info.max


def apply_rescale(raw: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """``slope * raw + intercept`` by the package's HU rules (may modify ``raw`` in place; never float64).

    >>> apply_rescale(np.array([0, 1000], np.int16), 1, -1024)
    array([-1024,   -24], dtype=int16)
    >>> apply_rescale(np.array([0, 2], np.int16), 0.5, 0).dtype
    dtype('float32')
    """
    slope = 1.0 if slope is None or not math.isfinite(slope) or slope == 0 else float(slope)
    intercept = 0.0 if intercept is None or not math.isfinite(intercept) else float(intercept)
    if raw.dtype.kind in "iu" and slope == 1.0 and intercept.is_integer():
        if intercept == 0:
            return raw
        inter = int(intercept)
        if raw.size == 0:
            return raw
        # exact int32 arithmetic on the range decides the dtype; the add itself runs in place
        lo, hi = int(raw.min()) + inter, int(raw.max()) + inter
        for cand in (raw.dtype, np.dtype(np.int16), np.dtype(np.int32)):
            if cand.itemsize <= max(raw.dtype.itemsize, 2) and _fits(lo, hi, cand):
                out = raw if cand == raw.dtype else raw.astype(cand)
                np.add(out, inter, out=out, casting="unsafe")
                return out
    if raw.dtype.kind == "f" and slope == 1.0 and intercept == 0.0:
        return raw if raw.dtype.itemsize <= 4 else raw.astype(np.float32)
    out = raw.astype(np.float32)
    if slope != 1.0:
        np.multiply(out, np.float32(slope), out=out)
    if intercept != 0.0:
        np.add(out, np.float32(intercept), out=out)
    return out


def _predict_dtype(raw: np.dtype, slope: float, intercept: float) -> np.dtype:
    if raw.kind in "iu" and slope == 1.0 and float(intercept).is_integer():
        if intercept == 0 or raw.kind == "i":
            return raw
        return np.dtype(np.int16) if raw.itemsize <= 2 else raw
    if raw.kind == "f" and slope == 1.0 and intercept == 0.0:
        return raw if raw.itemsize <= 4 else np.dtype(np.float32)
    return np.dtype(np.float32)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def _is_url(text: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) is not None


class Volume:
    """A lazily decoded CT volume. Build with :meth:`open`, :meth:`from_ctrate` or :meth:`from_array`."""

    def __init__(self) -> None:  # use the classmethods
        self._source: str | bytes | None = None  # local path, URL, or raw file bytes
        self._kind = "array"  # "path" | "url" | "bytes" | "array"
        self._gz = False
        self._name: str | None = None
        self._hdr = None
        self._spacing_override: tuple[float, float, float] | None = None
        self._rescale_override: tuple[float, float] | None = None
        self._affine: np.ndarray | None = None
        self._array: np.ndarray | None = None
        self._cache: "PreparedCache | None" = None
        self._cache_key: str | None = None

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        source: str | os.PathLike | bytes,
        *,
        spacing: Sequence[float] | None = None,
        rescale: tuple[float, float] | None = None,
        name: str | None = None,
        cache: "PreparedCache | bool | None" = None,
    ) -> "Volume":
        """Open lazily (not even the header is read yet).

        ``spacing`` (mm, i/j/k) replaces the header geometry: the affine becomes ``diag(spacing)``.
        ``rescale=(slope, intercept)`` replaces the header's ``scl_slope``/``scl_inter``.
        ``cache=True`` (or a :class:`~radgenome_hf.access.cache.PreparedCache`) stores the decoded array once and serves
        later ``array()``/``crop()`` calls from it.
        """
        v = cls()
        if isinstance(source, (bytes, bytearray, memoryview)):
            v._kind, v._source = "bytes", bytes(source)
            v._gz = v._source[:2] == _GZ_MAGIC
        else:
            text = os.fspath(source)
            if text.startswith("file://"):
                text = text[len("file://") :]
            if _is_url(text):
                v._kind, v._source = "url", text
            else:
                p = Path(text).expanduser()
                if not p.is_file():
                    raise MissingVolumeError(
                        f"{p}: no such volume file; check the path (or download the volume first)"
                    )
                v._kind, v._source = "path", str(p)
            v._gz = text.endswith(".gz")
            stem = PurePosixPath(text).name
            for suffix in (".nii.gz", ".nii"):
                if stem.endswith(suffix):
                    stem = stem[: -len(suffix)]
            v._name = stem
        if name is not None:
            v._name = name
        if spacing is not None:
            sp = tuple(float(s) for s in spacing)
            if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
                raise ValueError(f"spacing must be three positive finite numbers (mm), got {spacing!r}")
            v._spacing_override = sp  # type: ignore[assignment]
        if rescale is not None:
            v._rescale_override = (float(rescale[0]), float(rescale[1]))
        if cache is True:
            from .cache import PreparedCache

            cache = PreparedCache()
        v._cache = cache or None
        return v

    @classmethod
    def from_ctrate(
        cls,
        path: str | os.PathLike,
        metadata: Mapping[str, Any] | None = None,
        *,
        cache: "PreparedCache | bool | None" = None,
    ) -> "Volume":
        """A CT-RATE volume with the right geometry and HU.

        Under a ``*_fixed/`` folder the header is complete and used as is (``metadata`` is ignored, so the rescale
        is never applied twice). A v1 file (``train/``, ``valid/``) has a blank header: spacing comes from
        ``metadata`` (``xy_spacing`` list + ``z_spacing``) and the rescale from ``rescale_slope``/
        ``rescale_intercept`` (the CSV's ``XYSpacing``/``ZSpacing``/``RescaleSlope``/``RescaleIntercept`` work
        too); the affine is then ``diag(spacing)``.
        """
        text = os.fspath(path)
        parts = PurePosixPath(text.replace("\\", "/")).parts[:-1]
        if any(p.endswith("_fixed") for p in parts):
            return cls.open(path, cache=cache)
        if metadata is None:
            raise MalformedFileError(
                text,
                "a CT-RATE v1 volume has a blank header; pass its metadata row (xy_spacing, z_spacing, "
                "rescale_slope, rescale_intercept) or open the *_fixed copy",
            )
        spacing, rescale = _ctrate_geometry(metadata, text)
        return cls.open(path, spacing=spacing, rescale=rescale, cache=cache)

    @classmethod
    def from_array(cls, array: np.ndarray, affine: np.ndarray | None = None, name: str | None = None) -> "Volume":
        """Wrap an in-memory ``(i, j, k)`` array (float64 is stored as float32)."""
        arr = np.asanyarray(array)
        if arr.ndim != 3:
            raise ShapeMismatchError(f"a volume must be 3D, got shape {arr.shape}")
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        v = cls()
        v._array = arr
        v._affine = np.eye(4) if affine is None else np.asarray(affine, np.float64).reshape(4, 4)
        v._name = name
        return v

    # -- header -----------------------------------------------------------------------------------
    def _where(self) -> str:
        return "<bytes>" if self._kind == "bytes" else str(self._source)

    def _header(self):
        if self._hdr is not None or self._kind == "array":
            return self._hdr
        try:
            if self._kind == "path":
                if self._gz:
                    with _gzip_reader(self._source) as f:
                        img = _header_from_stream(f)
                else:
                    with open(self._source, "rb") as f:  # type: ignore[arg-type]
                        img = _header_from_stream(f)
            elif self._kind == "bytes":
                bio = io.BytesIO(self._source)  # type: ignore[arg-type]
                with (gzip.GzipFile(fileobj=bio) if self._gz else bio) as f:
                    img = _header_from_stream(f)
            else:
                import fsspec

                with fsspec.open(self._source, "rb", block_size=1 << 16) as raw:
                    with (gzip.GzipFile(fileobj=raw) if self._gz else raw) as f:
                        img = _header_from_stream(f)
        except CorruptVolumeError as exc:
            if exc.path is None:
                raise CorruptVolumeError(self._where(), str(exc)) from exc
            raise
        except (FileNotFoundError, PermissionError):
            raise
        except Exception as exc:
            raise CorruptVolumeError(
                self._where(), f"cannot read the NIfTI header ({type(exc).__name__}: {exc}); re-download the file"
            ) from exc
        self._check_header(img)
        self._hdr = img
        return img

    def _check_header(self, hdr) -> None:
        where = self._where()
        try:
            dims = tuple(int(s) for s in hdr.get_data_shape())
        except Exception as exc:  # nibabel: HeaderDataError on a dim[0] outside 1..7
            raise CorruptVolumeError(where, f"header dims {list(hdr['dim'])} are impossible ({exc})") from exc
        shape = dims
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != 3 or any(s <= 0 for s in shape):
            raise CorruptVolumeError(where, f"header dims {dims} are not a 3D volume")
        try:
            dtype = hdr.get_data_dtype()
        except Exception as exc:  # an unknown datatype code
            raise CorruptVolumeError(
                where, f"header datatype code {int(hdr['datatype'])} is not a NIfTI data type; the header is corrupt"
            ) from exc
        if dtype.kind not in "iuf" or dtype.fields is not None:
            raise CorruptVolumeError(
                where, f"header data type {dtype} (code {int(hdr['datatype'])}) is not a CT volume's integer/float type"
            )
        magic = bytes(hdr["magic"]).rstrip(b"\0")
        if magic in (b"ni1", b"ni2"):
            raise CorruptVolumeError(
                where, f"magic {magic!r} marks a .hdr/.img pair (data in another file); convert it to a single .nii(.gz)"
            )
        offset = float(hdr["vox_offset"])
        if not math.isfinite(offset) or offset > MAX_VOLUME_BYTES:
            raise CorruptVolumeError(where, f"header vox_offset {offset} is impossible; the header is corrupt")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes > MAX_VOLUME_BYTES:
            raise CorruptVolumeError(
                where,
                f"header asks for {nbytes / 2**30:.1f} GiB (dims {shape}); this is more than the "
                f"{MAX_VOLUME_BYTES / 2**30:.1f} GiB limit (RADGENOME_MAX_VOLUME_BYTES) - the header is corrupt",
            )
        if self._spacing_override is None:
            zooms = [float(z) for z in hdr.get_zooms()[:3]]
            if not all(math.isfinite(z) and z > 0 for z in zooms):
                raise CorruptVolumeError(
                    where,
                    f"header spacing {zooms} is zero/NaN; for a CT-RATE v1 file use Volume.from_ctrate(path, "
                    "metadata), or pass spacing=",
                )

    def _data_offset(self) -> int:
        """Where the voxels start: ``vox_offset``, raised to the minimum (352 / 544) as nibabel's header fix does."""
        hdr = self._header()
        return max(int(hdr["vox_offset"]), int(hdr.single_vox_offset))

    def _check_available(self, total: int) -> None:
        """Refuse before allocating when the source cannot hold ``total`` decoded bytes (a lying header).

        An uncompressed file must be at least that long; deflate expands at most ~1032x, so a gzip stream of
        ``n`` bytes inflates to at most ``1032 * n`` (+ slack for the gzip header).
        """
        if self._kind == "path":
            size = os.stat(self._source).st_size  # type: ignore[arg-type]
        elif self._kind == "bytes":
            size = len(self._source)  # type: ignore[arg-type]
        else:
            try:
                import fsspec

                fs, p = fsspec.core.url_to_fs(self._source)
                size = int(fs.size(p))
            except Exception:  # size unknown: the read itself detects truncation
                return
        limit = size * 1032 + (1 << 16) if self._gz else size
        if total > limit:
            raise CorruptVolumeError(
                self._where(),
                f"the header promises {total} bytes (dims {self._raw_shape()}, offset {self._data_offset()}) but the "
                f"{'compressed ' if self._gz else ''}file has only {size} bytes: it is truncated or the header is "
                "corrupt; re-download it",
            )

    def _raw_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self._header().get_data_shape()[:3])  # type: ignore[return-value]

    def _rescale(self) -> tuple[float, float]:
        if self._rescale_override is not None:
            return self._rescale_override
        slope, inter = self._header().get_slope_inter()
        slope = 1.0 if slope is None or not math.isfinite(slope) or slope == 0 else float(slope)
        inter = 0.0 if inter is None or not math.isfinite(inter) else float(inter)
        return slope, inter

    # -- properties -------------------------------------------------------------------------------
    @property
    def name(self) -> str | None:
        return self._name

    @property
    def path(self) -> str | None:
        """Local path or URL of the source (``None`` for bytes or arrays)."""
        return self._source if self._kind in ("path", "url") else None  # type: ignore[return-value]

    @property
    def loaded(self) -> bool:
        """Whether the voxel data are in memory."""
        return self._array is not None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._array.shape) if self._array is not None else self._raw_shape()  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        if self._affine is None:
            if self._spacing_override is not None:
                self._affine = np.diag([*self._spacing_override, 1.0])
            else:
                self._affine = np.asarray(self._header().get_best_affine(), np.float64)
        return self._affine.copy()

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        if self._spacing_override is not None:
            return self._spacing_override
        a = self.affine
        return tuple(float(round(np.linalg.norm(a[:3, c]), 6)) for c in range(3))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"LPS"`` or ``"RAS"`` (``nibabel.aff2axcodes``)."""
        import nibabel as nib

        return "".join(str(c) for c in nib.aff2axcodes(self.affine))

    @property
    def dtype(self) -> np.dtype:
        """Dtype of :meth:`array` (predicted from the header until loaded)."""
        if self._array is not None:
            return self._array.dtype
        return _predict_dtype(self._header().get_data_dtype().newbyteorder("="), *self._rescale())

    @property
    def nbytes(self) -> int:
        s = self.shape
        return int(s[0] * s[1] * s[2] * self.dtype.itemsize)

    def __repr__(self) -> str:
        try:
            sp = tuple(round(x, 4) for x in self.spacing)
            return (
                f"Volume(name={self._name!r}, shape={self.shape}, spacing={sp}, orientation={self.orientation!r}, "
                f"dtype={self.dtype}, memory={_fmt_bytes(self.nbytes)}, loaded={self.loaded})"
            )
        except Exception as exc:  # repr must not raise
            return f"Volume(name={self._name!r}, source={self._where()!r}, unreadable={exc!s:.120})"

    # -- decoding ---------------------------------------------------------------------------------
    def _decode_raw(self) -> np.ndarray:
        """The stored values, F-ordered (i, j, k), writable, native byte order."""
        hdr = self._header()
        dtype = hdr.get_data_dtype()
        shape = self._raw_shape()
        offset = self._data_offset()
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        total = offset + nbytes
        where = self._where()
        self._check_available(total)  # before allocating: a hostile header cannot make us reserve gigabytes
        buf = np.empty(total, np.uint8)
        try:
            if self._kind == "path":
                if self._gz:
                    with _gzip_reader(self._source) as f:
                        got = _readinto_full(f, memoryview(buf))
                        _verify_gzip_end(f, got, total)
                else:
                    with open(self._source, "rb") as f:  # type: ignore[arg-type]
                        got = _readinto_full(f, memoryview(buf))
            else:
                if self._kind == "bytes":
                    data = self._source
                else:
                    import fsspec

                    with fsspec.open(self._source, "rb") as f:
                        data = f.read()
                with (_gzip_reader(io.BytesIO(data)) if self._gz else io.BytesIO(data)) as f:  # type: ignore[arg-type]
                    got = _readinto_full(f, memoryview(buf))
                    if self._gz:
                        _verify_gzip_end(f, got, total)
        except (FileNotFoundError, PermissionError):
            raise
        except Exception as exc:  # zlib.error, EOFError, isal errors, OSError
            raise CorruptVolumeError(
                where, f"the compressed stream is corrupt or truncated ({type(exc).__name__}: {exc}); re-download it"
            ) from exc
        if got < total:
            raise CorruptVolumeError(
                where, f"file is truncated: {got - offset} of {nbytes} data bytes present; re-download it"
            )
        arr = np.ndarray(shape, dtype=dtype, buffer=buf, offset=offset, order="F")
        if not dtype.isnative:
            arr = arr.astype(dtype.newbyteorder("="))
        return arr

    def _cache_key_for(self) -> str:
        if self._cache_key is None:
            assert self._cache is not None
            slope, inter = self._rescale()
            extra = {} if self._spacing_override is None else {"spacing": list(self._spacing_override)}
            self._cache_key = self._cache.key_for(self._source, "hu", slope=slope, intercept=inter, **extra)  # type: ignore[arg-type]
        return self._cache_key

    def array(self, dtype: Any = None, out: np.ndarray | None = None) -> np.ndarray:
        """The whole volume in HU, ``(i, j, k)``, Fortran order (kept in memory; ``release()`` drops it).

        ``out``: a buffer of the volume's shape and HU dtype to fill and return instead, kept by the caller and
        not by this object. From a prepared cache the volume decodes straight into it, which spares the kernel
        mapping and zeroing a fresh array per call (the loop-over-volumes pattern).
        """
        if out is not None:
            if dtype is not None:
                raise ValueError("pass either dtype= or out= (out's dtype is the volume's HU dtype)")
            if self._array is None and self._cache is not None:
                got = self._cache.get_array(self._cache_key_for(), out=out)
                if got is not None:
                    return got
            arr = self.array()
            if out.shape != arr.shape or out.dtype != arr.dtype:
                raise ValueError(
                    f"out= has shape {out.shape} {out.dtype}, the volume is {arr.shape} {arr.dtype}; "
                    "pass a buffer of that shape and dtype (or out=None)"
                )
            np.copyto(out, arr)
            return out
        if self._array is None:
            arr = None
            if self._cache is not None:
                arr = self._cache.get_array(self._cache_key_for())
            if arr is None:
                arr = apply_rescale(self._decode_raw(), *self._rescale())
                if self._cache is not None:
                    self._cache.put_array(self._cache_key_for(), arr)
            self._array = arr
        return self._array if dtype is None else self._array.astype(dtype, copy=False)

    def release(self) -> None:
        """Drop the decoded array (a file-backed volume can decode again later)."""
        if self._kind != "array":
            self._array = None

    def _check_bbox(self, bbox: Sequence[int]) -> tuple[int, ...]:
        b = tuple(int(x) for x in bbox)
        shape = self.shape
        if len(b) != 6 or any(b[a] < 0 or b[a + 3] > shape[a] or b[a + 3] <= b[a] for a in range(3)):
            raise ValueError(f"bbox {bbox!r} is not a non-empty (i0, j0, k0, i1, j1, k1) inside shape {shape}")
        return b

    def crop(self, bbox: Sequence[int]) -> np.ndarray:
        """Voxels inside the half-open ``bbox`` (HU, F order). Reads only what it needs from a cache or ``.nii``."""
        b = self._check_bbox(bbox)
        sl = (slice(b[0], b[3]), slice(b[1], b[4]), slice(b[2], b[5]))
        if self._array is not None:
            return self._array[sl].copy(order="K")
        if self._cache is not None:
            got = self._cache.crop(self._cache_key_for(), b)
            if got is not None:
                return got
        elif self._kind == "path" and not self._gz:
            hdr = self._header()
            try:  # memory-mapped: only the crop's pages are read
                mm = np.memmap(
                    self._source, dtype=hdr.get_data_dtype(), mode="r", offset=self._data_offset(),
                    shape=self._raw_shape(), order="F",
                )
                raw = np.array(mm[sl], order="F", dtype=mm.dtype.newbyteorder("="))
                del mm
            except (ValueError, OSError) as exc:
                raise CorruptVolumeError(self._where(), f"cannot read the crop ({exc}); re-download it") from exc
            return apply_rescale(raw, *self._rescale())
        elif self._kind == "url" and not self._gz:
            return apply_rescale(self._remote_slab(b), *self._rescale())
        return self.array()[sl].copy(order="K")

    def _remote_slab(self, b: Sequence[int]) -> np.ndarray:
        """Raw crop of an uncompressed remote ``.nii``: one range read of the k-slab, then slicing in memory."""
        import fsspec

        hdr = self._header()
        dtype = hdr.get_data_dtype()
        X, Y, _ = self._raw_shape()
        plane = X * Y * dtype.itemsize
        start = self._data_offset() + b[2] * plane
        length = (b[5] - b[2]) * plane
        with fsspec.open(self._source, "rb", block_size=1 << 18) as f:
            f.seek(start)
            data = f.read(length)
        if len(data) < length:
            raise CorruptVolumeError(self._where(), "file is truncated inside the requested crop; re-download it")
        slab = np.ndarray((X, Y, b[5] - b[2]), dtype=dtype, buffer=data, order="F")
        return np.array(slab[b[0] : b[3], b[1] : b[4], :], order="F", dtype=dtype.newbyteorder("="))

    def tensor(self) -> "torch.Tensor":
        """``torch.from_numpy(array().T)``: a zero-copy ``(k, j, i)`` tensor sharing memory with :meth:`array`."""
        import torch

        return torch.from_numpy(self.array().T)

    def region(
        self,
        masks: "PackedMasks",
        anatomy: str,
        margin: int | Sequence[int] = (8, 8, 4),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Crop the volume and the grounding mask around an anatomy path or bare node name (e.g. ``"heart"``).

        The mask is chosen by the official rule (``Ontology.grounding_mask`` over ``masks.names``): the anatomy
        mask of the path's last node, else the region mask of its first node, else the whole scan (all-True mask).
        ``margin`` (voxels, per axis) widens the tight bbox, clipped to the grid. An empty mask gives the whole
        volume with an all-False mask.
        """
        if tuple(masks.shape) != self.shape:
            raise ShapeMismatchError(
                f"{self._where()}: masks are on grid {masks.shape} but the volume is {self.shape}"
            )
        m = (margin,) * 3 if isinstance(margin, int) else tuple(int(x) for x in margin)
        key = normalize_name(anatomy) if "/" not in anatomy else None
        if key is not None and key in masks:
            name: str | None = key
        else:
            onto = get_ontology()
            path = normalize_path(anatomy)
            if path and path not in onto and not onto.paths_ending_in(path.rsplit("/", 1)[-1]):
                raise UnknownAnatomyError(
                    f"{anatomy!r} is neither a mask of this volume ({', '.join(masks.names[:5])}...) nor an "
                    "anatomy path of the RadGenome ontology"
                )
            _, name = onto.grounding_mask(path, available_anatomy=masks.names, available_regions=masks.names)
        shape = self.shape
        bb = None if name is None else masks.bbox(name)
        if bb is None:
            full = (0, 0, 0, *shape)
            mask = np.ones(shape, bool, order="F") if name is None else np.zeros(shape, bool, order="F")
            return self.crop(full), mask
        box = tuple(max(0, bb[a] - m[a]) for a in range(3)) + tuple(min(shape[a], bb[a + 3] + m[a]) for a in range(3))
        return self.crop(box), masks.crop(name, box)  # type: ignore[arg-type]


def _verify_gzip_end(f, got: int, total: int) -> None:
    """Read on past the voxels so gzip reaches its trailer and checks the CRC-32 and length (a flipped bit in
    the deflate stream can otherwise decode to silently wrong voxels). Bounded: at most 1 MiB more is read."""
    if got == total:
        f.read(1 << 20)


def _header_from_stream(f):
    """Read a NIfTI-1/2 header from an uncompressed stream (reads only the header and extensions)."""
    import nibabel as nib

    head = f.read(4)
    if len(head) < 4:
        raise CorruptVolumeError(None, "file is empty or truncated before the header")
    size = int.from_bytes(head, "little")
    if size not in (348, 540):
        size = int.from_bytes(head, "big")
    if size not in (348, 540):  # never read an attacker-chosen length
        raise CorruptVolumeError(None, f"not a NIfTI-1/2 file (sizeof_hdr field is {head!r}, expected 348 or 540)")
    cls = nib.Nifti2Header if size == 540 else nib.Nifti1Header
    rest = f.read(size - 4)
    if len(rest) < size - 4:
        raise CorruptVolumeError(None, "file is truncated inside the NIfTI header")
    hdr = cls.from_fileobj(io.BytesIO(head + rest + b"\0" * 4), check=False)  # check=True would "fix" pixdim
    if bytes(hdr["magic"]).rstrip(b"\0") not in (b"n+1", b"ni1", b"n+2", b"ni2"):
        raise CorruptVolumeError(None, f"not a NIfTI file (magic {bytes(hdr['magic'])!r})")
    return hdr


def _ctrate_geometry(meta: Mapping[str, Any], where: str) -> tuple[tuple[float, float, float], tuple[float, float]]:
    def get(*keys: str) -> Any:
        for k in keys:
            if k in meta and meta[k] is not None:
                return meta[k]
        return None

    xy = get("xy_spacing", "XYSpacing")
    z = get("z_spacing", "ZSpacing")
    if isinstance(xy, str):
        xy = ast.literal_eval(xy)
    try:
        xy = [float(x) for x in xy]  # type: ignore[union-attr]
        if len(xy) == 1:
            xy = xy * 2
        spacing = (xy[0], xy[1], float(z))
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(spacing)
    except Exception as exc:
        raise MalformedFileError(
            where, f"metadata spacing xy_spacing={get('xy_spacing', 'XYSpacing')!r} z_spacing={z!r} is not usable"
        ) from exc
    slope = get("rescale_slope", "RescaleSlope")
    inter = get("rescale_intercept", "RescaleIntercept")
    slope = 1.0 if slope is None or not math.isfinite(float(slope)) else float(slope)
    inter = 0.0 if inter is None or not math.isfinite(float(inter)) else float(inter)
    return spacing, (slope, inter)

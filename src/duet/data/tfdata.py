"""The "tf" data backend: a tf.data input pipeline feeding duet's PyTorch loop.

Per split, :class:`TfLoader` turns duet's sample list (the manifest's split,
never re-split) into the same batches the other backends give::

    samples (path, label)           in the order of contract.batch_plan(seed, epoch)
      -> tf.data, in parallel       read file -> sniff header -> decode -> resize the
         (AUTOTUNE, deterministic)  shorter side to load_size -> centre square, uint8
      -> batch -> prefetch
      -> torch.from_dlpack          no copy: the uint8 NHWC batch is viewed as NCHW
      -> .to(device)                uint8 until the device; augment does the float work

Pixels: the same as duet's reference path (``imageio.decode`` +
``preprocess.to_load_square``), bit for bit on this stack (tests/test_tfdata.py
asserts at most 1 level, mean 0.01; it measures 0):

- JPEG (8-bit RGB or grey, Huffman-coded, EXIF orientation 1 or none):
  ``tf.io.decode_jpeg`` at the DCT scale (1/2, 1/4, 1/8) that Pillow's
  ``draft`` picks in ``imageio.decode``, with the accurate integer IDCT. That
  decodes exactly like Pillow; TensorFlow's default (the fast IDCT) differs by
  up to 6 levels.
- PNG (8-bit RGB or grey, or palette; no transparency, no EXIF/XMP):
  ``tf.io.decode_png``, lossless, identical.
- Everything else goes through ``imageio.decode`` inside ``tf.numpy_function``:
  EXIF (or XMP) orientation other than 1 - ``tf.io.decode_image`` ignores
  EXIF, which is the one gap TensorFlow's decoders leave here - CMYK, alpha
  and transparency (composited on white), 16-bit and 1-4-bit grey PNG, GIF,
  BMP, WebP, TIFF, MPO, lossless/arithmetic/12-bit JPEG, and headers over the
  pixel limit (refused with duet's reason). Which way a file goes is decided
  from its header bytes (``_route``), per file, in microseconds.
- The resize and crop are ``preprocess.to_load_square`` itself (torch's uint8
  antialiased kernel, which releases the GIL), called through
  ``tf.numpy_function``, so every backend resizes with the same code.
  TensorFlow's own antialiased resize was measured slower (3.9 ms vs 2.0 ms
  for Pillow, which duet used before, and 0.4 ms for torch's kernel) and
  different. docs/tf_backend.md has the numbers.

Failures: a file that cannot be read or decoded mid-training (deleted or
truncated after the scan) never stops the pipeline. TensorFlow drops it
(``ignore_errors``), the loader notices the gap in the sample indices, asks
duet's decoder why, and returns the sample with label -1 and that reason in
``Batch.errors`` - the reason string the other backends give. Should duet's
decoder read it after all, the sample comes back with its pixels instead.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from duet.data.contract import Batch, LoaderOptions, PlanSampler, Sample
from duet.data.imageio import DecodeError, decode
from duet.data.preprocess import PreprocessSpec, to_load_square
from duet.system.tensorflow_import import import_tensorflow

tf = import_tensorflow()

# ------------------------------------------------------------------ header sniff

# Routes for one file, decided from its bytes by _route (tf.switch_case branches).
_JPEG_RATIOS = (1, 2, 4, 8)  # routes 0..3: decode_jpeg at ratio 1, 2, 4, 8
ROUTE_PNG = 4
ROUTE_DUET = 5
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that make Pillow's pixels differ from libpng's plain RGB: transparency
# (composited on white by imageio) and EXIF/XMP orientation (anywhere in the file).
_PNG_SPECIAL = (b"tRNS", b"eXIf", b"Raw profile type exif", b"XML:com.adobe.xmp")
_JPEG_SOF_HUFFMAN = (0xC0, 0xC1, 0xC2)  # baseline, extended, progressive


def _route(data: bytes, load_size: int, max_pixels: int) -> int:
    """Which decoder reproduces duet's pixels for these bytes (see the module
    docstring). Reads headers only, in microseconds. Anything unusual or
    unparseable goes to duet's decoder, which decodes it exactly or says why not."""
    try:
        if data[:2] == b"\xff\xd8":
            return _jpeg_route(data, load_size, max_pixels)
        if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", data[16:26])
            plain = (colour in (0, 2) and depth == 8) or colour == 3  # grey, RGB, palette
            if plain and w * h <= max_pixels and not any(k in data for k in _PNG_SPECIAL):
                return ROUTE_PNG
    except (IndexError, struct.error, ValueError):
        pass
    return ROUTE_DUET


def _jpeg_route(data: bytes, load_size: int, max_pixels: int) -> int:
    """Walk the JPEG markers up to the scan, as Pillow does when it opens the file."""
    i, size, exif_seen = 2, None, False
    while True:
        if data[i] != 0xFF:
            return ROUTE_DUET
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan (or end): headers are over
            break
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        segment = data[i + 4 : i + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\0\0"):
            # Pillow joins several EXIF segments; one with orientation 1 (or none) is the plain case.
            if exif_seen or _exif_orientation(segment[6:]) != 1:
                return ROUTE_DUET
            exif_seen = True
        elif (marker == 0xE1 and b"Orientation" in segment) or (
            marker == 0xE2 and segment.startswith(b"MPF\0")
        ):  # XMP tiff:Orientation, read by Pillow too
            return ROUTE_DUET
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            precision, h, w, components = struct.unpack(">BHHB", segment[:6])
            if marker not in _JPEG_SOF_HUFFMAN or precision != 8 or components not in (1, 3):
                return ROUTE_DUET  # lossless, arithmetic, 12-bit, CMYK/YCCK
            size = (w, h)
        i += 2 + length
    if size is None or size[0] * size[1] == 0 or size[0] * size[1] > max_pixels:
        return ROUTE_DUET
    # The DCT scale Pillow's draft((load_size, load_size)) picks in imageio.decode.
    scale = min(size[0] // load_size, size[1] // load_size)
    return _JPEG_RATIOS.index(8 if scale >= 8 else 4 if scale >= 4 else 2 if scale >= 2 else 1)


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag of IFD0 in an EXIF (TIFF) block: 1 when absent,
    0 when the block cannot be read (which sends the file to duet's decoder)."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 0
    try:
        ifd = struct.unpack(order + "I", tiff[4:8])[0]
        (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
        for k in range(count):
            tag, kind = struct.unpack(order + "HH", tiff[ifd + 2 + 12 * k : ifd + 6 + 12 * k])
            if tag == 0x0112:
                return struct.unpack(order + "H", tiff[ifd + 10 + 12 * k : ifd + 12 + 12 * k])[0] if kind == 3 else 0
    except struct.error:
        return 0
    return 1


# ------------------------------------------------------------------ the pipeline


def make_decoder(spec: PreprocessSpec, max_pixels: int) -> Any:
    """A ``tf.function``: encoded bytes -> the spec's uint8 load square (HxWx3).

    TensorFlow decodes what it decodes exactly like Pillow (route 0-4); the rest
    goes through ``imageio.decode`` (route 5). The resize and crop are
    ``preprocess.to_load_square`` itself (the resize every backend uses),
    because TensorFlow's antialiased resize is both slower here and different;
    docs/tf_backend.md has the measurements.

    Raises a TensorFlow error for a file that cannot be decoded (callers drop
    it with ``ignore_errors`` and explain it, or let it raise).
    """
    s = spec.load_size

    def square(x: Any, fn: Any) -> Any:
        out = tf.numpy_function(fn, [x], tf.uint8, stateful=False)
        return tf.ensure_shape(out, [s, s, 3])

    def resize(rgb: np.ndarray) -> np.ndarray:
        return to_load_square(rgb, spec)

    def duet_decode(data: bytes) -> np.ndarray:  # numpy_function hands a scalar string over as bytes
        return to_load_square(decode(data, max_pixels=max_pixels, min_size=s), spec)

    def route(data: bytes) -> np.int32:
        return np.int32(_route(data, s, max_pixels))

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def decode_square(data: Any) -> Any:
        which = tf.numpy_function(route, [data], tf.int32, stateful=False)
        jpeg = [
            lambda r=r: square(tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method="INTEGER_ACCURATE"), resize)
            for r in _JPEG_RATIOS
        ]
        png = lambda: square(tf.io.decode_png(data, channels=3, dtype=tf.uint8), resize)  # noqa: E731
        other = lambda: square(data, duet_decode)  # noqa: E731
        return tf.switch_case(tf.reshape(which, []), [*jpeg, png, other])

    return decode_square


def _dataset_options(workers: int) -> Any:
    options = tf.data.Options()
    options.deterministic = True  # order = the sample order, whatever the timing
    if workers > 1:
        options.threading.private_threadpool_size = workers
    return options


def file_dataset(
    paths: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    index: Sequence[int] | np.ndarray,
    decoder: Any,
    *,
    workers: int,
    shuffle_seed: int | None = None,
) -> Any:
    """(path, label, index) rows -> dataset of (uint8 square, label, index), in order.

    ``workers`` > 1: files decode in parallel, AUTOTUNE picks how many at once
    (up to ``workers`` threads); 0 or 1: one at a time (still ahead of the
    consumer, in tf.data's thread). ``shuffle_seed``: reshuffle the rows on
    every pass over the dataset, seeded (for Keras users; TfLoader orders each
    epoch itself).
    """
    ds = tf.data.Dataset.from_tensor_slices(
        (
            tf.constant(list(paths), tf.string),
            tf.constant(np.asarray(labels, dtype=np.int64)),
            tf.constant(np.asarray(index, dtype=np.int64)),
        )
    )
    if shuffle_seed is not None:
        ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    load = lambda p, y, i: (decoder(tf.io.read_file(p)), y, i)  # noqa: E731
    if workers > 1:
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(load)
    return ds.with_options(_dataset_options(workers))


def to_torch(t: Any) -> torch.Tensor:
    """A TensorFlow CPU tensor as a torch tensor sharing its memory (DLPack)."""
    return torch.from_dlpack(t)


# ------------------------------------------------------------------ the backend


class TfLoader:
    """The "tf" backend over one split. Iterating yields one epoch of Batches.

    Of ``options``, ``workers`` is the number of tf.data threads decoding files
    (0 or 1: one file at a time); ``cache_dir``, ``progress`` and
    ``device_share`` do not apply. Batches follow ``contract.batch_plan``, so for a seed and epoch they hold the same samples,
    in the same order, with the same pixels as the other backends' batches.
    """

    def __init__(self, samples: Sequence[Sample], spec: PreprocessSpec, options: LoaderOptions) -> None:
        self.samples = list(samples)
        self.spec = spec
        self.device = options.device
        self.workers = options.workers
        self.max_pixels = options.max_pixels
        self.plan = PlanSampler(len(self.samples), options)
        self._paths = np.array([str(s.path) for s in self.samples], dtype=object)
        self._labels = np.array([s.label for s in self.samples], dtype=np.int64)
        self._decoder = make_decoder(spec, options.max_pixels)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.plan.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.plan)

    def _dataset(self, plan: list[list[int]]) -> Any:
        """This epoch's pipeline: each run of equal-sized batches of the plan (the
        full ones, then the one or two last ones: see ``contract.plan_sizes``) is
        decoded and batched at its own size, and the runs are concatenated, so
        tf.data's batch() regroups the plan exactly. ``plan`` is not empty."""
        parts = []
        for size, group in itertools.groupby(plan, key=len):
            idx = np.asarray([i for b in group for i in b], dtype=np.int64)
            part = file_dataset(self._paths[idx].tolist(), self._labels[idx], idx, self._decoder, workers=self.workers)
            # A file that fails is dropped here (ignore_errors), explained in _with_failures.
            parts.append(part.ignore_errors().batch(size))
        ds = parts[0]
        for part in parts[1:]:
            ds = ds.concatenate(part)
        return ds.prefetch(tf.data.AUTOTUNE)

    def __iter__(self) -> Iterator[Batch]:
        plan = [b for b in self.plan if b]
        order = np.asarray([i for b in plan for i in b], dtype=np.int64)
        if len(order) == 0:
            return
        ds = self._dataset(plan)
        pos = 0  # how far into `order` the batches so far reached
        for images, labels, index in ds:
            idx = index.numpy()
            x = to_torch(images).permute(0, 3, 1, 2)  # NHWC -> NCHW view, no copy
            y = torch.from_numpy(labels.numpy())
            end = pos + len(idx)
            if np.array_equal(order[pos:end], idx):
                pos = end
                yield self._batch(x, y, torch.from_numpy(idx), [""] * len(idx))
                continue
            missing, pos = _gaps(order, pos, idx)
            yield self._with_failures(x, y, idx, missing)
        if pos < len(order):  # the last files of the epoch failed
            empty = torch.zeros(0, 3, self.spec.load_size, self.spec.load_size, dtype=torch.uint8)
            yield self._with_failures(
                empty, torch.zeros(0, dtype=torch.int64), np.zeros(0, dtype=np.int64), order[pos:].tolist()
            )

    def _batch(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, errors: list[str]) -> Batch:
        non_blocking = self.device.type == "cuda"
        return Batch(
            x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking), idx, errors
        )

    def _with_failures(self, x: torch.Tensor, y: torch.Tensor, idx: np.ndarray, missing: list[int]) -> Batch:
        """Append the samples TensorFlow dropped: pixels if duet's decoder reads
        them after all, else a blank square, label -1 and duet's reason."""
        extra_x, extra_y, errors = [], [], [""] * len(idx)
        for i in missing:
            square, reason = _reference_load(self.samples[i], self.spec, self.max_pixels)
            extra_x.append(torch.from_numpy(square).permute(2, 0, 1))  # HWC, like the rest of the batch
            extra_y.append(-1 if reason else self.samples[i].label)
            errors.append(reason)
        x = torch.cat([x, torch.stack(extra_x)])
        y = torch.cat([y, torch.tensor(extra_y, dtype=torch.int64)])
        index = torch.from_numpy(np.concatenate([idx, np.asarray(missing, dtype=np.int64)]))
        return self._batch(x, y, index, errors)


def _gaps(order: np.ndarray, pos: int, idx: np.ndarray) -> tuple[list[int], int]:
    """Positions of ``order`` skipped before (and between) the indices of this
    batch, which tf.data delivers in order; returns (missing sample indices, new pos)."""
    missing: list[int] = []
    for i in idx.tolist():
        while order[pos] != i:
            missing.append(int(order[pos]))
            pos += 1
        pos += 1
    return missing, pos


def _reference_load(sample: Sample, spec: PreprocessSpec, max_pixels: int) -> tuple[np.ndarray, str]:
    """What the "torch" backend gives for this sample: (square, "") or (blank, reason)."""
    try:
        rgb = decode(sample.path, max_pixels=max_pixels, min_size=spec.load_size)
        return to_load_square(rgb, spec), ""
    except (DecodeError, OSError) as e:
        reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
        return np.zeros((spec.load_size, spec.load_size, 3), dtype=np.uint8), reason

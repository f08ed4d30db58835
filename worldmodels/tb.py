"""TensorBoard logging: scalars, image grids and videos, plus a progress bar and rate meters.

Videos are written as animated GIF image summaries encoded with Pillow. ``SummaryWriter.add_video``
needs moviepy < 2 and, without it, prints a line and writes nothing; the GIF route has no such
dependency and TensorBoard's image dashboard plays GIFs.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


def to_uint8(images: Tensor | np.ndarray) -> np.ndarray:
    """uint8 ``[0, 255]`` or float ``[-1, 1]`` images -> uint8 numpy (same shape)."""
    if isinstance(images, Tensor):
        images = images.detach().to("cpu")
        if images.dtype != torch.uint8:
            images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return images.numpy()
    if images.dtype != np.uint8:
        return ((np.clip(images, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    return images


TITLE_HEIGHT = 11
"""Pixels of the title strip ``image_grid`` draws above its columns (text about 8 pixels high)."""


def _title_strip(titles: Sequence[str], ncol: int, w: int, pad: int, width: int) -> np.ndarray:
    """``(3, TITLE_HEIGHT, width)`` uint8: each column's title in black on white, cut to fit."""
    import cv2

    strip = np.full((TITLE_HEIGHT, width, 3), 255, dtype=np.uint8)
    font, scale = cv2.FONT_HERSHEY_PLAIN, 0.7
    for k, title in enumerate(list(titles)[:ncol]):
        text = str(title)
        while text and cv2.getTextSize(text, font, scale, 1)[0][0] > w:
            text = text[:-1]  # as much of the title as fits over its column
        x = pad + k * (w + pad)
        cv2.putText(strip, text, (x, TITLE_HEIGHT - 2), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip.transpose(2, 0, 1)


def image_grid(
    images: Tensor | np.ndarray, nrow: int | None = None, pad: int = 2,
    titles: Sequence[str] | None = None,
) -> np.ndarray:  # fmt: skip
    """``(N, C, H, W)`` -> one ``(C, H', W')`` uint8 image, ``nrow`` images per row, white gaps;
    with ``titles`` (one per column), a strip of ``TITLE_HEIGHT`` pixels above the grid names each
    column (e.g. ``real``, then each world)."""
    images = to_uint8(images)
    if images.ndim != 4:
        raise ValueError(f"image_grid expects (N, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    if c == 1:
        images = np.repeat(images, 3, axis=1)
        c = 3
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = nrow
    nrows = math.ceil(n / ncol)
    grid = np.full((c, nrows * (h + pad) + pad, ncol * (w + pad) + pad), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        grid[:, y : y + h, x : x + w] = images[i]
    if titles is not None:
        grid = np.concatenate((_title_strip(titles, ncol, w, pad, grid.shape[2]), grid), axis=1)
    return grid


def encode_gif(frames: np.ndarray, fps: float) -> bytes:
    """``(T, C, H, W)`` uint8 -> bytes of an animated GIF that loops forever."""
    pil = [Image.fromarray(np.ascontiguousarray(f.transpose(1, 2, 0))) for f in frames]
    buf = io.BytesIO()
    duration = max(20, int(round(1000 / fps)))  # browsers clamp faster GIF frames anyway
    pil[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=pil[1:],
        duration=duration,
        loop=0,
        optimize=False,
        disposal=1,
    )
    return buf.getvalue()


class TBLogger:
    """A thin layer over ``SummaryWriter`` with the three kinds of data a run logs.

    The event file is created on the first write, so a command that fails before it logs
    anything (a refused ``--resume``, say) leaves the run directory as it was."""

    def __init__(self, logdir: str, *, flush_secs: int = 30) -> None:
        self.logdir = logdir
        self.flush_secs = flush_secs
        self._writer: SummaryWriter | None = None

    @property
    def writer(self) -> SummaryWriter:
        if self._writer is None:
            self._writer = SummaryWriter(self.logdir, flush_secs=self.flush_secs)
        return self._writer

    def scalar(self, tag: str, value: float | np.floating, step: int) -> None:
        self.writer.add_scalar(tag, float(value), step)

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        for key, value in values.items():
            self.scalar(f"{prefix}{key}", value, step)

    def image(self, tag: str, image: Tensor | np.ndarray, step: int) -> None:
        """One ``(C, H, W)`` image (uint8, or float in ``[-1, 1]``)."""
        self.writer.add_image(tag, to_uint8(image), step, dataformats="CHW")

    def images(
        self, tag: str, images: Tensor | np.ndarray, step: int, nrow: int | None = None,
        titles: Sequence[str] | None = None,
    ) -> None:  # fmt: skip
        """A grid of ``(N, C, H, W)`` images (columns titled by ``titles``)."""
        self.writer.add_image(tag, image_grid(images, nrow, titles=titles), step, dataformats="CHW")

    def video(
        self, tag: str, frames: Tensor | np.ndarray, step: int, fps: float = 15,
        nrow: int | None = None, titles: Sequence[str] | None = None,
    ) -> None:  # fmt: skip
        """``(T, C, H, W)`` one clip, or ``(N, T, C, H, W)`` clips played together as a grid of
        ``nrow`` clips per row (default: all in one row), each column titled by ``titles``."""
        frames = to_uint8(frames)
        if frames.ndim == 5:
            n = nrow or frames.shape[0]
            frames = np.stack(
                [image_grid(frames[:, t], nrow=n, titles=titles) for t in range(frames.shape[1])]
            )
        if frames.ndim != 4 or frames.shape[0] == 0:
            raise ValueError(f"video expects (T, C, H, W) or (N, T, C, H, W), got {frames.shape}")
        if frames.shape[1] == 1:
            frames = np.repeat(frames, 3, axis=1)
        _, c, h, w = frames.shape
        image = Summary.Image(
            height=h, width=w, colorspace=c, encoded_image_string=encode_gif(frames, fps)
        )
        self.writer._get_file_writer().add_summary(
            Summary(value=[Summary.Value(tag=tag, image=image)]), step
        )

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class NullLogger(TBLogger):
    """The logger of a rank other than 0 under ``torchrun``: rank 0 logs the run, this writes
    nothing (no event file is ever created)."""

    def __init__(self) -> None:
        super().__init__("")

    def scalar(self, tag: str, value: float | np.floating, step: int) -> None:
        pass

    def image(self, tag: str, image: Tensor | np.ndarray, step: int) -> None:
        pass

    def images(self, *args: Any, **kwargs: Any) -> None:
        pass

    def video(self, *args: Any, **kwargs: Any) -> None:
        pass

    def text(self, tag: str, text: str, step: int = 0) -> None:
        pass


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    unit: str = "it",
) -> tqdm:
    """A tqdm bar with ETA; disabled bars cost nothing (tests, non-interactive logs)."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        disable=not enabled,
        unit=unit,
        dynamic_ncols=True,
        leave=False,
        smoothing=0.1,
    )


class Rate:
    """Counts items and reports items per second since the last ``read()``."""

    def __init__(self) -> None:
        self._t = time.perf_counter()
        self._n = 0

    def add(self, n: int) -> None:
        self._n += n

    def read(self) -> float:
        now = time.perf_counter()
        rate = self._n / max(now - self._t, 1e-9)
        self._t, self._n = now, 0
        return rate

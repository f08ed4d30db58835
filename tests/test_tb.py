"""TensorBoard: every kind of summary is really in the event file (a silent video is the trap)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from tb_read import read_events

from worldmodels.tb import TBLogger, image_grid


def test_scalars_images_and_videos_read_back(tmp_path):
    log = TBLogger(str(tmp_path))
    for step in range(3):
        log.scalar("loss/denoiser", 1.0 / (step + 1), step)
    log.images("recon/grid", torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8), 0)
    frames = torch.zeros(5, 3, 16, 16, dtype=torch.uint8)
    for t in range(5):
        frames[t, :, :, t] = 255  # a moving bar: each frame differs
    log.video("rollout/real", frames, 2, fps=10)
    log.video("rollout/grid", torch.rand(3, 4, 3, 16, 16) * 2 - 1, 2)  # float [-1, 1], 3 clips
    log.close()

    acc = read_events(tmp_path)
    assert [e.value for e in acc.Scalars("loss/denoiser")] == pytest.approx([1, 0.5, 1 / 3])
    grid = acc.Images("recon/grid")[0]
    assert (grid.width, grid.height) == (3 * 10 + 2, 2 * 10 + 2)

    video = acc.Images("rollout/real")[0]
    assert video.step == 2
    gif = Image.open(io.BytesIO(video.encoded_image_string))
    assert gif.format == "GIF" and gif.n_frames == 5
    gif.seek(3)
    assert np.asarray(gif.convert("RGB"))[0, 3].tolist() == [255, 255, 255]

    clips = Image.open(io.BytesIO(acc.Images("rollout/grid")[0].encoded_image_string))
    assert clips.n_frames == 4 and clips.size == (3 * 18 + 2, 18 + 2)


def test_image_grid_layout():
    imgs = np.stack([np.full((1, 2, 2), i, dtype=np.uint8) for i in range(5)])
    grid = image_grid(imgs, nrow=3, pad=1)
    assert grid.shape == (3, 2 * 3 + 1, 3 * 3 + 1)
    assert grid[0, 1, 1] == 0 and grid[0, 1, 4] == 1 and grid[0, 4, 4] == 4
    assert grid[0, 4, 7] == 255  # the empty sixth cell stays white


def test_bad_video_shape_is_rejected(tmp_path):
    log = TBLogger(str(tmp_path))
    with pytest.raises(ValueError, match="video expects"):
        log.video("x", torch.zeros(3, 16, 16, dtype=torch.uint8), 0)
    log.close()


def test_titled_grids_name_each_column_above_the_images():
    from worldmodels.tb import TITLE_HEIGHT, image_grid

    images = np.full((4, 3, 20, 30), 90, dtype=np.uint8)  # 2 rows x 2 columns of grey
    plain = image_grid(images, nrow=2)
    titled = image_grid(images, nrow=2, titles=["real", "a-very-long-world-name"])
    assert titled.shape == (3, plain.shape[1] + TITLE_HEIGHT, plain.shape[2])
    assert np.array_equal(titled[:, TITLE_HEIGHT:], plain)  # the images themselves unchanged
    strip = titled[:, :TITLE_HEIGHT]
    for k in range(2):  # text (dark pixels) over each column, none over the gaps' outer edge
        x = 2 + k * 32
        assert (strip[:, :, x : x + 30] < 128).any(), k
    assert (strip[:, :, :2] == 255).all()
    # a title too long for its column is cut to fit: it never spills into the next column
    only_second = image_grid(images, nrow=2, titles=["", "a-very-long-world-name"])[
        :, :TITLE_HEIGHT
    ]
    assert (only_second[:, :, : 2 + 30 + 2] == 255).all()

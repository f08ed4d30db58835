"""Replay sampler speed: batches/s on a store of ~20k synthetic 64x64x3 frames.

python bench/replay_speed.py [--frames 20000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from worldmodels.replay import Episode, ReplayStore, SegmentSampler

# (batch_size, seq_len, pad_left, pad_right): IRIS-like, DIAMOND world model (4 context frames,
# pad_left 3) and DIAMOND actor-critic burn-in + horizon.
CASES = [(32, 6, 0, 0), (32, 19, 3, 0), (64, 20, 0, 0)]


def synthetic_store(frames: int, seed: int = 0) -> ReplayStore:
    rng = np.random.default_rng(seed)
    store = ReplayStore(None)
    while store.num_frames < frames:
        T = int(min(rng.integers(100, 2000), max(frames - store.num_frames - 1, 1)))
        store.add(
            Episode(
                obs=rng.integers(0, 256, size=(T + 1, 3, 64, 64), dtype=np.uint8),
                act=rng.integers(0, 18, size=T).astype(np.int64),
                rew=rng.normal(size=T).astype(np.float32),
                end=bool(rng.random() < 0.5),
                trunc=False,
            )
        )
    return store


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=20_000)
    p.add_argument("--seconds", type=float, default=2.0, help="time per case")
    args = p.parse_args()
    torch.set_num_threads(1)

    store = synthetic_store(args.frames)
    print(
        f"store: {len(store)} episodes, {store.num_frames} frames, "
        f"{store.nbytes / 2**20:.1f} MiB obs, {store.nbytes / store.num_frames:.0f} bytes/frame"
    )
    for B, T, pad_left, pad_right in CASES:
        sampler = SegmentSampler(store, T, pad_left=pad_left, pad_right=pad_right, seed=0)
        sampler.sample(B)  # warm-up
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < args.seconds:
            sampler.sample(B)
            n += 1
        print(
            f"B={B:3d} T={T:2d} pad=({pad_left},{pad_right}): {n / elapsed:8.1f} batches/s "
            f"({1e3 * elapsed / n:.2f} ms/batch, {B * T * n / elapsed / 1e3:.0f}k frames/s)"
        )


if __name__ == "__main__":
    main()

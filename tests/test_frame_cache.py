"""The token cache: hits skip the encoder, a new tokenizer version re-encodes, padding is zero."""

import torch

from worldmodels.frame_cache import FrameCache


class CountingEncoder:
    def __init__(self):
        self.calls = 0
        self.frames = 0
        self.offset = 0  # stands in for the tokenizer's weights

    def __call__(self, obs):
        self.calls += 1
        self.frames += obs.shape[0]
        return obs[:, 0, 0, :2].long() + self.offset  # (N, K=2) tokens derived from pixels


def test_cache_hits_invalidation_and_padding():
    obs = torch.randint(0, 200, (2, 3, 1, 1, 2), dtype=torch.uint8)
    ids = torch.tensor([[5, 6, 7], [-1, 0, 1]])
    enc = CountingEncoder()
    cache = FrameCache(2)
    first = cache.lookup(ids, obs, enc, version=0)
    assert enc.frames == 5 and torch.equal(first[1, 0], torch.zeros(2, dtype=torch.long))
    assert torch.equal(first[0, 1], obs[0, 1, 0, 0, :2].long())
    again = cache.lookup(ids, obs, enc, version=0)  # all cached: no encoder call
    assert enc.calls == 1 and torch.equal(first, again)
    enc.offset = 100  # the tokenizer changed
    third = cache.lookup(ids[:1], obs[:1], enc, version=1)
    assert enc.frames == 8 and torch.equal(third[0], first[0] + 100)
    fourth = cache.lookup(ids, obs, enc, version=1)  # only the 2 stale frames of row 1
    assert enc.frames == 10 and torch.equal(fourth[1, 1:], first[1, 1:] + 100)
    assert cache.encoded == 10

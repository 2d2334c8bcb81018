"""The engine's sample pipeline: noise and encoding run ahead of the dispatcher's send times (a sample leaves
before the rest of its chunk is encoded; the next chunk's noise is drawn while this one is denoised), the
bytes and denoiser batches are those of the chunk-wise path, lookahead is bounded, and nothing new starts
after a permanent failure. Ordering is enforced with events, never with timing."""
from __future__ import annotations

import asyncio
import hashlib
import threading

import numpy as np
import pytest
import torch

from robust_api import engine as engine_module
from robust_api.dispatch import Dispatcher
from robust_api.engine import Engine
from robust_api.errors import PermanentProviderError
from robust_api.images import encode_for, load_image, to_uint8
from robust_api.noise import noisy_copies
from robust_api.providers.base import ImageLimits, Provider, ProviderResponse

SIGMA, SEED = 0.25, 3
TIMEOUT_S = 30.0  # only a guard against hanging: no assertion depends on how fast anything runs


class Recorder(Provider):
    """Answers each image with the sha256 of its bytes; calls wait for `gate` when one is given."""

    name = "recorder"
    limits = ImageLimits(max_bytes=1 << 20)
    default_rate_per_s = 1000.0

    def __init__(self, max_batch: int = 1, gate: asyncio.Event | None = None, reject: set[bytes] = frozenset()):
        self.max_batch = max_batch
        self.gate = gate
        self.reject = reject
        self.calls: list[list[bytes]] = []

    async def classify(self, images):
        self.calls.append(list(images))
        if self.gate is not None:
            await self.gate.wait()
        return [PermanentProviderError(self.name, "invalid_image", "rejected") if data in self.reject
                else ProviderResponse({"sha": hashlib.sha256(data).hexdigest()}, model_version="1") for data in images]


def make(provider: Provider, denoiser=None, denoise_batch: int = 4) -> Engine:
    return Engine(provider, Dispatcher(provider, concurrency=16), lambda response, name: "x", denoiser=denoiser,
                  denoiser_id={"name": "test", "sha256": "0" * 64} if denoiser is not None else None,
                  denoise_batch=denoise_batch)


def picture(size: int = 24):
    return load_image(np.random.default_rng(0).uniform(0.2, 0.8, (size, size, 3)).astype(np.float32), name="p")


def chunkwise_bytes(image, phase: str, indices: list[int], batch: int, denoise=None) -> dict[int, bytes]:
    """What the previous chunk-wise pipeline sent for each sample: noise a chunk, denoise it, encode each row."""
    out = {}
    for s in range(0, len(indices), batch):
        chunk = indices[s : s + batch]
        pixels = noisy_copies(image.array, SIGMA, SEED, image.sha256, phase, chunk)
        if denoise is not None:
            pixels = denoise(pixels)
        for index, row in zip(chunk, pixels):
            out[index] = encode_for(to_uint8(row), Recorder.limits).data
    return out


async def eventually(predicate) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while not predicate():
            await asyncio.sleep(0.001)


async def test_a_sample_leaves_before_the_rest_of_its_chunk_is_encoded(monkeypatch):
    image = picture()
    last_of_chunk = chunkwise_bytes(image, "estimation", [3], 1)[3]
    release = threading.Event()

    def encode(pixels, limits):
        encoded = encode_for(pixels, limits)
        if encoded.data == last_of_chunk:
            release.wait(TIMEOUT_S)  # sample 3 stays "being encoded" until the test has seen a send
        return encoded

    monkeypatch.setattr(engine_module, "encode_for", encode)
    provider = Recorder()
    engine = make(provider)
    task = asyncio.create_task(engine.responses(image, "estimation", range(8), SIGMA, SEED))
    try:
        await eventually(lambda: len(provider.calls) >= 1)
        assert not release.is_set()  # sample 0 went out while sample 3 of its chunk was still being encoded
    finally:
        release.set()
    records = await task
    assert [r.index for r in records] == list(range(8))


async def test_the_next_chunks_noise_is_drawn_while_this_chunk_is_denoised(monkeypatch):
    drawn: list[list[int]] = []
    next_chunk_drawn = threading.Event()

    def noise(*args):
        drawn.append(list(args[-1]))
        if len(drawn) == 2:
            next_chunk_drawn.set()
        return noisy_copies(*args)

    class WaitsForTheNextNoise(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.overlapped: list[bool] = []

        def forward(self, x):
            if not self.overlapped:
                self.overlapped.append(next_chunk_drawn.wait(TIMEOUT_S))
            return x

    monkeypatch.setattr(engine_module, "noisy_copies", noise)
    denoiser = WaitsForTheNextNoise()
    await make(Recorder(), denoiser=denoiser).responses(picture(), "selection", range(12), SIGMA, SEED)
    assert denoiser.overlapped == [True]  # chunk 1 was noised while chunk 0 sat in the denoiser
    assert drawn == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


@pytest.mark.parametrize("denoised", [False, True])
async def test_bytes_and_denoiser_batches_are_those_of_the_chunkwise_path(denoised):
    batches: list[int] = []

    class Halve(torch.nn.Module):
        def forward(self, x):
            batches.append(x.shape[0])
            return x * 0.5 + 0.25

    def halve(pixels):  # the same arithmetic as Halve on NHWC
        return np.asarray(torch.from_numpy(pixels.copy()) * 0.5 + 0.25)

    image = picture()
    provider = Recorder()
    engine = make(provider, denoiser=Halve() if denoised else None, denoise_batch=16)
    records = await engine.responses(image, "estimation", range(40), SIGMA, SEED)
    expected = chunkwise_bytes(image, "estimation", list(range(40)), 16, halve if denoised else None)
    assert {r.index: r.response["sha"] for r in records} == {i: hashlib.sha256(b).hexdigest() for i, b in expected.items()}
    assert batches == ([16, 16, 8] if denoised else [])


async def test_provider_batches_are_the_chunks_slices():
    provider = Recorder(max_batch=3)
    await make(provider, denoise_batch=8).responses(picture(), "estimation", range(10), SIGMA, SEED)
    expected = chunkwise_bytes(picture(), "estimation", list(range(10)), 8)
    slices = [[expected[i] for i in c] for c in ([0, 1, 2], [3, 4, 5], [6, 7], [8, 9])]  # chunks of 8, then 3s
    assert sorted(provider.calls) == sorted(slices)


@pytest.fixture
def started(monkeypatch) -> list[list[int]]:
    """The chunks whose encoding started, in order (Engine._encode_samples recorded)."""
    chunks: list[list[int]] = []
    encode_samples = Engine._encode_samples

    def record(self, image, phase, chunk, sigma, seed):
        chunks.append(list(chunk))
        return encode_samples(self, image, phase, chunk, sigma, seed)

    monkeypatch.setattr(Engine, "_encode_samples", record)
    return chunks


async def test_lookahead_is_bounded(started):
    provider = Recorder(gate=asyncio.Event())
    engine = make(provider, denoise_batch=2)
    engine.prepare_ahead = 2
    task = asyncio.create_task(engine.responses(picture(), "estimation", range(10), SIGMA, SEED))
    await eventually(lambda: len(provider.calls) >= 1)  # the first call is held: nothing is answered
    assert started == [[0, 1], [2, 3]]
    provider.gate.set()
    await task
    assert started == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


async def test_nothing_new_starts_after_a_send_failed_for_good(started):
    image = picture()
    provider = Recorder(reject={chunkwise_bytes(image, "estimation", [0], 1)[0]})
    engine = make(provider, denoise_batch=2)
    engine.prepare_ahead = 1
    with pytest.raises(PermanentProviderError):
        await engine.responses(image, "estimation", range(6), SIGMA, SEED)
    assert started == [[0, 1]] and len(provider.calls) == 2  # sample 1 of the chunk still went and was logged
    assert engine.index.get(engine._key(image, "estimation", 1, SIGMA, SEED)) is not None

"""Several threads on one Predictor or one SAM get the masks of their own image.

A Predictor serialises its calls with one re-entrant lock; a thread that sets an image
and prompts it holds that lock around both. ``SAM.__call__`` keeps no state between
calls. Each threaded result must equal the single-threaded result of the same image.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_samscope.core.predict.predictor import Predictor
from napari_samscope.core.predict.sam_api import SAM

THREADS = 3
ROUNDS = 4
POINTS = [[20.0, 15.0], [50.0, 30.0]]


def _images(count: int) -> list[np.ndarray]:
    """Same-size images that segment differently."""
    rng = np.random.default_rng(7)
    images = []
    for i in range(count):
        img = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
        img[5 + 8 * i : 30 + 4 * i, 10 + 6 * i : 60] = (220, 40 * i, 90)
        images.append(img)
    return images


def _run_threads(work, count: int) -> list:
    """``work(i)`` on ``count`` threads started together; their results (errors raised)."""
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as error:  # reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def _assert_same(got, expected) -> None:
    np.testing.assert_array_equal(got.masks, expected.masks)
    np.testing.assert_array_equal(got.scores, expected.scores)
    np.testing.assert_array_equal(got.logits, expected.logits)


def test_threads_sharing_a_predictor_get_their_own_image(random_state_sam):
    images = _images(THREADS)
    predictor = Predictor(random_state_sam)
    expected = []
    for img in images:
        predictor.set_image(img)
        expected.append(predictor.predict(points=POINTS, multimask_output=True))
    assert not np.array_equal(expected[0].logits, expected[1].logits)

    def work(i: int) -> list:
        out = []
        for _ in range(ROUNDS):
            with predictor.lock:  # the image stays this thread's until it has its masks
                predictor.set_image(images[i])
                out.append(predictor.predict(points=POINTS, multimask_output=True))
        return out

    for i, results in enumerate(_run_threads(work, THREADS)):
        for got in results:
            _assert_same(got, expected[i])


def test_each_call_sees_one_image_while_another_thread_replaces_it(random_state_sam):
    """Without holding the lock around several calls, each call is still whole: a
    prediction is the one of an image that was current, never a mix of two."""
    images = _images(2)
    predictor = Predictor(random_state_sam)
    expected, embeddings = [], []
    for img in images:
        predictor.set_image(img)
        expected.append(predictor.predict(points=POINTS, multimask_output=True))
        embeddings.append(predictor.get_embedding())
    stop = threading.Event()

    def replace_images() -> None:
        i = 0
        while not stop.is_set():
            predictor.set_embedding(embeddings[i % 2])
            i += 1

    replacer = threading.Thread(target=replace_images)
    replacer.start()
    try:
        for _ in range(20):
            got = predictor.predict(points=POINTS, multimask_output=True)
            matches = [k for k, e in enumerate(expected) if np.array_equal(got.logits, e.logits)]
            assert len(matches) == 1
            _assert_same(got, expected[matches[0]])
    finally:
        stop.set()
        replacer.join()


def test_sam_call_from_several_threads(random_state_sam):
    sam = SAM.from_sam(random_state_sam)
    images = _images(THREADS)
    expected = [sam(img, points=POINTS, multimask_output=True) for img in images]
    results = _run_threads(
        lambda i: [sam(images[i], points=POINTS, multimask_output=True) for _ in range(ROUNDS)],
        THREADS,
    )
    for i, per_thread in enumerate(results):
        for got in per_thread:
            _assert_same(got, expected[i])


@pytest.mark.parametrize("method", ["set_image", "predict", "decode", "reset_image"])
def test_calls_hold_the_predictor_lock(random_state_sam, method):
    """While another thread holds the lock, every call that touches the current image
    waits for it."""
    predictor = Predictor(random_state_sam)
    image = _images(1)[0]
    predictor.set_image(image)
    calls = {
        "set_image": lambda: predictor.set_image(image),
        "predict": lambda: predictor.predict(points=POINTS),
        "decode": lambda: predictor.decode(
            torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.int)
        ),
        "reset_image": predictor.reset_image,
    }
    done = threading.Event()
    with predictor.lock:
        thread = threading.Thread(target=lambda: (calls[method](), done.set()))
        thread.start()
        assert not done.wait(0.3)  # blocked while the lock is held here
    thread.join(timeout=60)
    assert done.is_set()

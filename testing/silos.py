"""Silo files of a shape no embedded dataset has, for tests of the ``files`` dataset mode.

28×28 8-bit digit images: scikit-learn's 8×8 digits, each pixel repeated 3×3 and the
24×24 result padded to 28×28, stored flat as ``x`` uint8 of shape ``(N, 784)`` and
``y`` int64 — what an organisation exporting MNIST-like images would write.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SIDE = 28


def digit_images_28() -> tuple[np.ndarray, np.ndarray]:
    """Return every scikit-learn digit as a flat 28×28 uint8 image, and its label."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    big = np.kron(digits.images, np.ones((3, 3)))  # 8×8 -> 24×24, values 0..16
    padded = np.pad(big, ((0, 0), (2, 2), (2, 2)))
    pixels = np.round(padded * 255 / 16).astype(np.uint8)
    return pixels.reshape(len(pixels), IMAGE_SIDE * IMAGE_SIDE), digits.target.astype(np.int64)


def write_image_silos(
    directory: Path, num_silos: int = 10, test_size: int = 300, seed: int = 0
) -> tuple[list[Path], Path]:
    """Write ``num_silos`` silo files and a server test file of 28×28 digit images.

    Returns
    -------
    tuple[list[Path], Path]
        The silo files ``silos/silo-00.npz`` ... in partition order, and
        ``server-test.npz`` (``test_size`` images no silo holds) beside that folder.
    """
    x, y = digit_images_28()
    order = np.random.default_rng(seed).permutation(len(y))
    test, pool = order[:test_size], order[test_size:]
    (directory / "silos").mkdir(parents=True, exist_ok=True)
    silos = []
    for i, part in enumerate(np.array_split(pool, num_silos)):
        path = directory / "silos" / f"silo-{i:02d}.npz"
        np.savez(path, x=x[part], y=y[part])
        silos.append(path)
    test_path = directory / "server-test.npz"
    np.savez(test_path, x=x[test], y=y[test])
    return silos, test_path

"""The GPU machine's data pack: balanced across folders, within the byte budget, bit-exact."""

from __future__ import annotations

import numpy as np
from PIL import Image

from hndsr.training.data import pack_images
from hndsr.training.gpu import TRANSFER_LIMIT, transfer_budget
from hndsr_client.image_io import read_rgb


def _folder(path, count, seed):
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path / f"t{i}.png")
    return path


def test_pack_takes_folders_in_turn_within_the_budget_and_is_lossless(tmp_path):
    a, b = _folder(tmp_path / "a" / "train", 6, 0), _folder(tmp_path / "b" / "train", 2, 1)
    files, size = pack_images([a, b], tmp_path / "all")
    assert files == 8
    one = next((tmp_path / "all" / "0-train").glob("*.webp"))
    assert np.array_equal(read_rgb(one), read_rgb(a / one.with_suffix(".png").name))
    budget = size // 2
    files, packed = pack_images([a, b], tmp_path / "half", budget_bytes=budget)
    assert packed <= budget and files >= 3
    assert len(list((tmp_path / "half" / "1-train").glob("*.webp"))) == 2  # the small folder is not crowded out
    files, _ = pack_images([a, b], tmp_path / "few", per_folder=1)
    assert files == 2


def test_transfer_budget_leaves_room_for_the_tree():
    budget = transfer_budget()
    assert 0 < budget < TRANSFER_LIMIT

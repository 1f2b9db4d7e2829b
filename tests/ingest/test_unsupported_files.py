"""A valid file that the installed Pillow cannot read (here a BMP whose bitfields layout
Pillow does not know) is reported as unsupported by this Pillow build, not as corrupt
(issue #15, defect 5): the person's file is fine, their Pillow is what lacks."""

from __future__ import annotations

import struct

import pytest

from clipsearch.images import SkipImage, load_image

from support import draw_image


def odd_bitfields_bmp(path, width: int = 4, height: int = 2):
    """A well-formed 16-bit BMP with 3-3-3 colour masks."""
    row = ((width * 16 + 31) // 32) * 4
    pixels = bytes(row * height)
    masks = struct.pack("<III", 0x0007, 0x0038, 0x01C0)
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 16, 3, len(pixels), 2835, 2835, 0, 0)
    offset = 14 + len(header) + len(masks)
    path.write_bytes(b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + masks + pixels)
    return path


def test_an_unsupported_layout_is_named_so(tmp_path):
    with pytest.raises(SkipImage, match=r"^unsupported by this Pillow build \([\d.]+\): .*bitfields") as caught:
        load_image(str(odd_bitfields_bmp(tmp_path / "odd.bmp")))
    assert caught.value.lasting  # it holds until the file or Pillow changes (both are in the record's key)


def test_damage_is_still_called_damage(tmp_path):
    jpeg = draw_image(tmp_path / "photo.jpg", fmt="JPEG", size=(300, 200))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg.read_bytes()[:400])
    with pytest.raises(SkipImage, match="corrupt or truncated"):
        load_image(str(cut))

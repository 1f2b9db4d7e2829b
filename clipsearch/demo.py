"""Demo photos for `make demo`: real photographs that ship inside scikit-image.

Copied (and renamed so that a person can judge the hits) into a folder at run time,
so the demo needs no download beyond the package registry.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# scikit-image file -> the name it gets in the demo folder
SAMPLE_PHOTOS = {
    "astronaut.png": "astronaut.png",
    "chelsea.png": "cat.png",
    "coffee.png": "coffee-cup.png",
    "rocket.jpg": "rocket-launch.jpg",
    "motorcycle_left.png": "motorcycle.png",
    "camera.png": "cameraman.png",
    "coins.png": "coins.png",
    "moon.png": "moon-surface.png",
    "hubble_deep_field.jpg": "galaxies.jpg",
    "retina.jpg": "retina.jpg",
    "horse.png": "horse-silhouette.png",
    "page.png": "printed-page.png",
    "brick.png": "brick-wall.png",
    "grass.png": "grass.png",
    "gravel.png": "gravel.png",
}


def copy_sample_photos(dest: str | Path) -> list[Path]:
    try:
        import skimage
    except ImportError:
        raise SystemExit("the demo photos come from scikit-image: pip install 'clipsearch[demo]'") from None
    source = Path(skimage.__file__).parent / "data"
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name, new_name in SAMPLE_PHOTOS.items():
        if (source / name).is_file():
            shutil.copyfile(source / name, dest / new_name)
            copied.append(dest / new_name)
    if not copied:
        raise SystemExit(f"no sample photos found in {source}")
    return copied


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "demo-photos"
    photos = copy_sample_photos(target)
    print(f"copied {len(photos)} photos into {target}/")

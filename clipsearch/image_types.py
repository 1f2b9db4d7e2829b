"""The file types clipsearch reads, by extension: a table without Pillow.

clipsearch/images.py decodes them (and re-exports these names); this module imports
nothing, so that whoever only asks whether a name looks like an image (the thin
client's `search --server photo.jpg`, which never decodes anything) does not pay for
importing Pillow.
"""

from __future__ import annotations

# The file types clipsearch reads, by the Pillow plugin that decodes each, with their
# extensions: the one table that ingest's walk, search's image queries and serve's
# uploads go by (README, "Supported image files"). Decoding tries these plugins only,
# whatever a file's name says: a JPEG named .png is read, but PostScript named .jpg is
# not an image here, where Pillow's own guess handed it to its EPS plugin, which runs
# Ghostscript on the file (an interpreter whose -dSAFER has been escaped many times).
# Each plugin listed parses its format in Python or a bundled codec, and runs nothing.
IMAGE_TYPES: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),  # multi-picture (MPO) JPEGs too: their first picture
    "PNG": (".png",),  # and APNG
    "WEBP": (".webp",),
    "GIF": (".gif",),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
    "AVIF": (".avif",),  # built into Pillow 11.3 and later; else the pillow-avif-plugin package
    "HEIF": (".heic", ".heif"),  # iPhone photos: only with the pillow-heif package installed
    "ICO": (".ico",),
    "PPM": (".ppm", ".pgm", ".pbm", ".pnm"),
    "TGA": (".tga",),
}
# Every extension of the table, whether this install reads it or not.
IMAGE_EXTENSIONS = frozenset(extension for extensions in IMAGE_TYPES.values() for extension in extensions)
# The package that reads a type not built into every Pillow, and the type's name for
# people: said for each such file met where it is not installed.
PLUGIN_PACKAGES = {"HEIF": ("pillow-heif", "HEIC/HEIF"), "AVIF": ("pillow-avif-plugin", "AVIF")}

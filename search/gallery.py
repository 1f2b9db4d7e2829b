"""A self-contained HTML page of search hits: thumbnails (embedded as data URIs),
rank, score, path and the photo's facts (when, with what, where), under the filters that
chose them, so a person can look at results in any browser."""

from __future__ import annotations

import base64
import html
import io
import warnings
from pathlib import Path
from typing import Callable, Sequence

from clipsearch.errors import ClipsearchError
from clipsearch.names import has_control, is_text, shown

THUMBNAIL = 256

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222}
h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:256px;background:#fff;border:1px solid #ddd;border-radius:6px;overflow:hidden}
figure img{width:256px;height:256px;object-fit:contain;background:#eee;display:block}
figcaption{padding:6px 8px;font-size:.8rem;word-break:break-all}
.score{font-weight:600}
.facts{color:#555}
.filters{color:#555;margin:.25rem 0 1rem}
.missing{width:256px;height:256px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}
"""


def thumbnail_data_uri(path: str) -> str | None:
    # Here: a thin client's gallery (thumbnails from a server) needs no PIL.
    from clipsearch.images import open_image, to_rgb, upright

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's "Corrupt EXIF data": the thumbnail is still right
            with open_image(path) as img:
                img.draft("RGB", (THUMBNAIL * 2, THUMBNAIL * 2))
                img = to_rgb(upright(img))
                img.thumbnail((THUMBNAIL, THUMBNAIL))
                buffer = io.BytesIO()
                img.save(buffer, format="JPEG", quality=85)
    except Exception:  # a file deleted or damaged since ingest: show a placeholder
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_link(path: str) -> str:
    return Path(path).as_uri() if Path(path).is_absolute() else path


def readable(path: str) -> str:
    """A name for a page: a byte that is not UTF-8 as U+FFFD (a browser shows text, and
    $'caf\\xe9.jpg' reads as code), a name holding a line break quoted as a terminal
    shows it (an HTML line break would hide it). The exact name is in the title."""
    text = path if is_text(path) else path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return shown(text) if has_control(text) else text


def _name_html(path: str) -> str:
    """The name's caption, with its exact bytes ($'...') on hover where they differ."""
    exact = "" if readable(path) == shown(path) else f" title='{html.escape(shown(path), quote=True)}'"
    return f"<span class='path'{exact}>{html.escape(readable(path))}</span>"


def facts_line(hit) -> str:
    """'2023-07-14 10:22 · Canon EOS 5D · 48.85660, 2.35220': the facts the hit carries
    (search hits do; a duplicate group's members carry none)."""
    taken, camera, location = (getattr(hit, name, None) for name in ("taken", "camera", "location"))
    parts = [taken.replace("T", " ")[:16] if isinstance(taken, str) else None,
             camera if isinstance(camera, str) else None]
    if isinstance(location, dict) and {"lat", "lon"} <= set(location):
        parts.append(f"{location['lat']:.5f}, {location['lon']:.5f}")
    return " \u00b7 ".join(part for part in parts if part)


def render_gallery(sections: Sequence[tuple[str, Sequence]], thumbnail: Callable[[object], str | None] | None = None,
                   link: Callable[[object], str] | None = None, filters: str | None = None) -> str:
    """`sections`: (title, hits) pairs; hits have rank, score and path, and a search's
    their photo facts. `thumbnail(hit)` gives a data URI (default: made from the local
    file), `link(hit)` where a click goes (default: the local file). `filters`: the
    line saying what chose the hits (--after, --camera, --in ...), shown at the top."""
    thumbnail = thumbnail or (lambda hit: thumbnail_data_uri(hit.path))
    link = link or (lambda hit: file_link(hit.path))
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>clipsearch results</title>",
             f"<style>{STYLE}</style></head><body>"]
    if filters:
        parts.append(f"<p class='filters'>{html.escape(readable(filters))}</p>")
    for title, hits in sections:
        parts.append(f"<h2>{html.escape(readable(str(title)))}</h2><div class='grid'>")
        for hit in hits:
            uri = thumbnail(hit)
            href = html.escape(link(hit), quote=True)
            alt = html.escape(readable(Path(hit.path).name), quote=True)
            image = (f"<a href='{href}'><img src='{uri}' alt='{alt}'></a>"
                     if uri else "<div class='missing'>not readable</div>")
            facts = facts_line(hit)
            facts_html = f"<br><span class='facts'>{html.escape(facts)}</span>" if facts else ""
            parts.append(
                f"<figure>{image}<figcaption><span class='score'>#{hit.rank} &middot; {hit.score:.4f}</span>"
                f"<br>{_name_html(hit.path)}{facts_html}</figcaption></figure>")
        if not hits:
            parts.append("<p>no hits</p>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)


def write_gallery(path: str, sections: Sequence[tuple[str, Sequence]], **how) -> None:
    """The page of `render_gallery(sections, **how)`, written to `path`."""
    try:
        Path(path).write_text(render_gallery(sections, **how), encoding="utf-8")
    except OSError as exc:
        raise ClipsearchError(f"cannot write the gallery {shown(path)}: {exc.strerror or exc}") from None


def attempted(write: Callable[[], None]) -> ClipsearchError | None:
    """Run `write` (a gallery's), returning its one-line error instead of raising it:
    the page is written before the hits are printed, and a page that fails must not cost
    the hits, which may have taken minutes (duplicates over a library)."""
    try:
        write()
    except ClipsearchError as exc:
        return exc
    return None

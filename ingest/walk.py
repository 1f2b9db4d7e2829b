"""Find image files under folders, lazily, the way a person would expect.

os.scandir, one folder at a time (no list of a million paths in memory); hidden
files and folders, macOS `._*` AppleDouble files and the system folders of NAS boxes
and operating systems (SYSTEM_FOLDERS) skipped; `--exclude` globs matched against both
the name and the full path; symlinked folders walked once, so a link loop cannot make
the walk endless (a folder outside the roots that several links lead to is listed
again for each, its files not stat'ed again, so that each such link is seen). The
file types are clipsearch/images.py's IMAGE_TYPES.

A file is indexed under its canonical path. Where that path is not one the walk of
the roots reaches by itself (a link to a folder or file outside them, or into a hidden
or excluded one), the entry says so (`direct` False) and names the path it was reached
by (`via`): once that link is deleted or points elsewhere, `--prune` and a watcher
know no root reaches the file any more (ingest/prune.py reached_via).
"""

from __future__ import annotations

import fnmatch
import os
import stat
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

# How the walk's on_error names a folder it could not list (the reason begins so).
UNREADABLE_FOLDER = "cannot read folder"

# Folders that NAS boxes and operating systems keep beside people's files: thumbnails,
# recycle bins, snapshots, recovered fragments. Never walked, matched without regard to
# case (README, "What ingest reads"); hidden folders (.Trash-1000, .thumbnails,
# .@__thumb, .snapshot) are left out by their dot already. Synology puts five
# thumbnails of every photo in @eaDir beside it: each photo came up five times.
SYSTEM_FOLDERS = {
    "@eadir": "Synology: thumbnails and metadata of the files beside it",
    "#recycle": "Synology: recycle bin",
    "#snapshot": "Synology: snapshots",
    "@recycle": "QNAP: recycle bin",
    "@recently-snapshot": "QNAP: snapshots",
    "$recycle.bin": "Windows: recycle bin",
    "recycler": "Windows XP: recycle bin",
    "system volume information": "Windows: restore points and indexes",
    "lost+found": "Linux: fragments a file system check recovered",
}


def image_extensions() -> set[str]:
    """The extensions of the file types this install reads (clipsearch/images.py)."""
    from clipsearch.images import image_extensions as readable

    return readable()


@dataclass(frozen=True)
class FileEntry:
    path: str  # canonical absolute path
    size: int
    mtime_ns: int  # exact; a float mtime does not survive every JSON round trip bit for bit
    dev: int = -1  # the file system it is on (st_dev); -1 where not known
    # How the walk reached it: `via`, the paths through links by which it did where its
    # own path is not one a root reaches by itself (`direct` False); None: not known
    # (a path taken from the index, not walked).
    via: tuple[str, ...] = ()
    direct: bool | None = None

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9


def exclude_patterns(exclude: Iterable[str]) -> tuple[str, ...]:
    """--exclude globs as they are matched: against a name (`raw`, `*.tmp`), or against
    the full path. A relative path (`2019/Paris`, `./raw/`) could never match a full
    path, which starts with /: it is matched as the end of one (`*/2019/Paris`), as a
    person who typed it means. `~` is the home folder."""
    patterns = []
    for pattern in exclude:
        pattern = os.path.expanduser(pattern)
        if pattern.rstrip("/") not in ("", "*"):  # raw/ is raw; */ and / are left as they are
            pattern = pattern.rstrip("/")
        while pattern.startswith("./"):
            pattern = pattern[2:]
        if pattern.startswith("/"):  # the walk's paths are canonical: a symlinked home too
            pattern = os.path.realpath(pattern)
        elif "/" in pattern and not pattern.startswith("*"):
            pattern = "*/" + pattern
        patterns.append(pattern)
    return tuple(patterns)


def _excluded(name: str, path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)


def passed_over(name: str, path: str, patterns: Sequence[str] = ()) -> bool:
    """The walk's rule for one name, file or folder: hidden (and macOS `._*` AppleDouble
    files), a system folder's (SYSTEM_FOLDERS: no image file has such a name), or
    matched by an --exclude glob (against the name or the full path)."""
    return (name.startswith(".") or name.lower() in SYSTEM_FOLDERS
            or bool(patterns) and _excluded(name, path, patterns))


def excluded_target(path: str, patterns: Sequence[str]) -> bool:
    """Whether a link's target (canonical) lies in, or is, something --exclude names:
    `ln -s ../private/diary.jpg pub/` must not bring an excluded photo back in (and
    have serve share it)."""
    current = path
    while patterns:
        head, name = os.path.split(current)
        if not name:
            return False
        if _excluded(name, current, patterns):
            return True
        current = head
    return False


def _not_a_file(entry: os.DirEntry, is_link: bool) -> str | None:
    """Why a name with an image extension that is not a regular file is left out: said
    in the report (a link into a drive that is not mounted, a FIFO), not silently."""
    try:
        if is_link and not os.path.exists(entry.path):
            return f"broken link to {os.readlink(entry.path)}"
        mode = os.stat(entry.path).st_mode
    except OSError as exc:
        return f"cannot stat: {exc.strerror}"
    kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else None)
    return f"not a regular file ({kind})" if kind else None


def root_of(path: str, roots: Iterable[str]) -> str | None:
    """The root that `path` (absolute) lies under, or is; None if none."""
    for root in roots:
        if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
            return root
    return None


def walked_path(path: str, roots: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> str | None:
    """`path` (file or folder) in the spelling the walk would reach it by, if the walk
    would reach it: its folder canonical, its own name kept; None when the walk would pass
    it over. With `roots` (canonical), a path outside them is passed over, and so is one
    under a hidden or excluded folder below its root; without, only its own name is
    checked. A root itself is never passed over."""
    patterns = exclude_patterns(exclude)
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    if name:
        path = os.path.join(os.path.realpath(folder), name)
    if roots is None:
        return None if name and passed_over(name, path, patterns) or _links_into_excluded(path, patterns) else path
    root = root_of(path, roots)
    if root is None:
        return None
    current = root
    for part in os.path.relpath(path, root).split(os.sep) if path != root else ():
        current = os.path.join(current, part)
        if passed_over(part, current, patterns):
            return None
    return None if path != root and _links_into_excluded(path, patterns) else path


def _links_into_excluded(path: str, patterns: Sequence[str]) -> bool:
    """A link (to a file or a folder) whose target --exclude names: the walk passes
    it over, and so must a watcher that hears of the link being made."""
    return bool(patterns) and os.path.islink(path) and excluded_target(os.path.realpath(path), patterns)


def image_file(path: str, roots: Iterable[str] | None = None, exclude: Iterable[str] = (),
               extensions: set[str] | None = None, on_error=None) -> FileEntry | None:
    """One file by the walk's rules (walked_path, the image extensions, a regular file
    or a link to one), as the walk would yield it (canonical path, size, mtime); None
    for anything the walk would not yield, a missing file or a folder included.
    `on_error(path, reason)` hears about a file that exists but cannot be stat'ed."""
    extensions = image_extensions() if extensions is None else extensions
    lexical = walked_path(path, roots, exclude)
    if lexical is None or os.path.splitext(lexical)[1].lower() not in extensions:
        return None
    try:
        if not os.path.isfile(lexical):
            return None
        if os.path.islink(lexical) and excluded_target(os.path.realpath(lexical), exclude_patterns(exclude)):
            return None
        st = os.stat(lexical)
    except FileNotFoundError:  # gone since: a watcher hears of it as a deletion
        return None
    except OSError as exc:
        if on_error:
            on_error(lexical, f"cannot stat: {exc.strerror}")
        return None
    canonical = os.path.realpath(lexical)
    direct = True if roots is None or canonical == lexical else reached_directly(canonical, roots, exclude, extensions)
    return FileEntry(canonical, st.st_size, st.st_mtime_ns, st.st_dev, via=() if direct else (lexical,),
                     direct=direct)


def reached_directly(path: str, roots: Iterable[str], exclude: Iterable[str] = (),
                     extensions: set[str] | None = None) -> bool:
    """Whether a walk of `roots` (canonical) reaches the file at `path` (canonical) at
    that path, without a link: under a root, by the walk's rules, of a type it takes."""
    extensions = image_extensions() if extensions is None else extensions
    return os.path.splitext(path)[1].lower() in extensions and walked_path(path, roots, exclude) is not None


def spelled(path: str) -> str:
    """`path` absolute, its folder canonical, its own name kept (a link stays the link):
    how the walk names what it finds in a folder."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(folder), name) if name else folder


def walk_images(roots: Iterable[str], exclude: Iterable[str] = (), extensions: set[str] | None = None,
                on_error=None, *, within: Sequence[str] | None = None, on_again=None) -> Iterator[FileEntry]:
    """Yield each image file under `roots` once. `on_error(path, reason)` hears about
    folders that cannot be listed, names with an image extension that are no regular
    file (a broken link, a FIFO), and files of a type this install cannot read (HEIC
    without pillow-heif: what to install); the walk goes on.

    `within`: the folders of the library these roots are part of (a watcher's roots,
    which a folder it walks lies in; canonical), by which a file counts as reached
    directly; default: the roots themselves. A root may then be a link (kept as it is
    spelled). `on_again(path, via)` hears of a file yielded before, reached again
    through another link (`via`) that does not reach it directly.

    Whether a file is reached directly is a matter of its canonical path, not of the
    way the walk happened to meet it first: a folder of the library met through a
    link to a folder above it (`2020/everything -> ..`) is walked as itself, so its
    files are never recorded as reached only through that link."""
    from clipsearch.images import unreadable_extensions

    extensions = image_extensions() if extensions is None else extensions
    unreadable = {ext: reason for ext, reason in unreadable_extensions().items() if ext not in extensions}
    patterns = exclude_patterns(exclude)
    roots = list(roots)
    library = [os.path.realpath(os.path.abspath(r)) for r in (roots if within is None else within)]

    def inside(folder: str) -> bool:  # a folder the walk of the library reaches by itself
        return root_of(folder, library) is not None and walked_path(folder, library, exclude) is not None

    # Each folder is listed and stat'ed once (device, inode): loops end. Met again
    # through another link out of the library (`crossing`: the link by which the walk
    # left it; None inside), it is listed once more, its files not stat'ed: they are
    # the ones yielded before, each reported to on_again under this link's spelling.
    # Those links lie in the library's folders, so there are finitely many.
    crossed: dict[tuple[int, int], set[str | None]] = {}  # folder -> the crossings it was met by
    seen_files: set[tuple[int, int]] = set()  # two links to one file: one point
    for given in roots:
        root = os.path.realpath(os.path.abspath(given))
        lexical_root = root if within is None else spelled(given)
        crossing = None if within is None or inside(root) else lexical_root
        stack: list[tuple[str, str, str | None]] = [(root, root if crossing is None else lexical_root, crossing)]
        while stack:
            folder, lexical, crossing = stack.pop()
            try:
                st = os.stat(folder)
            except OSError as exc:
                if on_error:
                    on_error(folder, f"{UNREADABLE_FOLDER}: {exc.strerror}")
                continue
            met = crossed.setdefault((st.st_dev, st.st_ino), set())
            if crossing in met or crossing is None and met:
                continue  # a symlink loop, or a folder reached twice the same way
            again = bool(met)  # walked already, through another link out of the library
            met.add(crossing)
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                if on_error and not again:
                    on_error(folder, f"{UNREADABLE_FOLDER}: {exc.strerror}")
                continue
            subfolders = []
            for entry in entries:
                name = entry.name
                if passed_over(name, entry.path, patterns):  # hidden, ._* AppleDouble, --exclude
                    continue
                reached_by = os.path.join(lexical, name)
                try:
                    is_link = entry.is_symlink()
                    target = os.path.realpath(entry.path) if is_link else entry.path
                    if is_link and excluded_target(target, patterns):
                        continue
                    if entry.is_dir(follow_symlinks=True):
                        out = _crossing_into(target, is_link, crossing, reached_by, inside)
                        subfolders.append((target, target if out is None else reached_by, out))
                        continue
                    extension = os.path.splitext(name)[1].lower()
                    if extension not in extensions:
                        if extension in unreadable and on_error and not again and entry.is_file(follow_symlinks=True):
                            on_error(entry.path, unreadable[extension])
                        continue
                    direct = crossing is None if not is_link else reached_directly(target, library, exclude, extensions)
                    if again:  # this folder's files were yielded (or named) by its first walk
                        if not direct and on_again is not None:
                            on_again(target, reached_by)
                        continue
                    if not entry.is_file(follow_symlinks=True):
                        reason = _not_a_file(entry, is_link)
                        if reason and on_error:
                            on_error(entry.path, reason)
                        continue
                    st = entry.stat(follow_symlinks=True)
                except OSError as exc:  # vanished or unreadable between listing and stat
                    if on_error and not again:
                        on_error(entry.path, f"cannot stat: {exc.strerror}")
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen_files:
                    if not direct and on_again is not None:
                        on_again(target, reached_by)
                    continue
                seen_files.add(key)
                # `folder` is already canonical, so only a link needs resolving.
                yield FileEntry(target, st.st_size, st.st_mtime_ns, st.st_dev, via=() if direct else (reached_by,),
                                direct=direct)
            stack.extend(reversed(subfolders))  # depth-first, in name order


def _crossing_into(target: str, is_link: bool, crossing: str | None, reached_by: str, inside) -> str | None:
    """The crossing (the link by which the walk left the library) of a subfolder met
    as `reached_by`, canonically `target`: None for a folder of the library itself,
    however it was met (a link to a folder above the root leads back into it);
    a link out of the library starts one, unless the walk is outside it already."""
    if crossing is None and not is_link:
        return None  # a plain folder inside the library: inside it (no check needed)
    if inside(target):
        return None
    return crossing or reached_by


def count_image_names(roots: Iterable[str], exclude: Iterable[str] = (),
                      stop: threading.Event | None = None) -> int | None:
    """About how many image files the walk of `roots` will find, for an ETA while it
    is still under way: names alone (no stat), by the walk's rules for names, links to
    folders not followed. None if `stop` was set first."""
    extensions = image_extensions()
    patterns = exclude_patterns(exclude)
    total = 0
    stack = [os.path.realpath(os.path.abspath(root)) for root in roots]
    while stack:
        try:
            with os.scandir(stack.pop()) as listing:
                for entry in listing:  # a share's EIO or ESTALE may come mid-listing
                    if stop is not None and stop.is_set():
                        return None
                    if passed_over(entry.name, entry.path, patterns):
                        continue
                    try:
                        folder = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    if folder:
                        stack.append(entry.path)
                    elif os.path.splitext(entry.name)[1].lower() in extensions:
                        total += 1
        except OSError:
            continue  # the walk says what it could not list; the count is an estimate
    return total


class ImageCount:
    """count_image_names() in a thread of its own, started when asked: `total` once done."""

    def __init__(self, roots: Sequence[str], exclude: Iterable[str] = ()):
        self.total: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._count, args=(list(roots), tuple(exclude)), daemon=True,
                                        name="clipsearch-count")
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def _count(self, roots: list[str], exclude: tuple[str, ...]) -> None:
        try:
            self.total = count_image_names(roots, exclude, self._stop)
        except Exception:  # an estimate: never a traceback over the progress line
            self.total = None

    def stop(self) -> None:
        self._stop.set()

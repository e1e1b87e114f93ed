"""Walking an input tree the way cohorts are built: through symbolic links, each real file once.

Cohort folders are usually assembled from symbolic links into a PACS export or a shared archive, so
:func:`walk_files` follows links to files and to folders. Every folder and file is identified by its real path
(links resolved), which makes the walk safe and exact:

* a link back to a folder on the path that leads to it (a loop) is not followed, and is reported;
* a second way to a folder or file already found (two links to one series, or a link beside its target) is
  skipped, and reported once: for a folder, the folder, not each of its files;
* a link whose target does not exist (dangling) is counted and named;
* a folder that cannot be listed is reported with the reason, and the walk goes on.

Paths are returned as they were reached (under the root, through the links), so case ids and messages use the
names the user sees. The order is deterministic: a folder's files by name, then its subfolders by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FileTree:
    """What :func:`walk_files` found under ``root``.

    Attributes
    ----------
    files:
        Every regular file, once per real file, as reached from ``root``.
    dangling_links:
        ``(link, target)`` for each symbolic link whose target does not exist.
    duplicates:
        ``(skipped, kept)``: a path that leads to a folder or file already found at ``kept``.
    loops:
        ``(link, target)`` for each link to a folder on its own path (following it would never end).
    unreadable:
        ``(folder, reason)`` for each folder that could not be listed.
    """

    root: Path
    files: list[Path] = field(default_factory=list)
    dangling_links: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)
    loops: list[tuple[Path, Path]] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> list[str]:
        """One line per kind of skipped path, naming the first few; empty when nothing was skipped."""
        lines = []
        if self.dangling_links:
            lines.append(f"{_count(self.dangling_links, 'dangling symbolic link')} skipped: "
                         + _names(f"{link} -> {target}" for link, target in self.dangling_links))
        if self.duplicates:
            lines.append(f"{_count(self.duplicates, 'duplicate path')} skipped (same real folder or file as one "
                         "already found): " + _names(f"{skipped} = {kept}" for skipped, kept in self.duplicates))
        if self.loops:
            lines.append(f"{_count(self.loops, 'symbolic link loop')} not followed: "
                         + _names(f"{link} -> {target}" for link, target in self.loops))
        if self.unreadable:
            lines.append(f"{_count(self.unreadable, 'folder')} could not be listed: "
                         + _names(f"{folder} ({reason})" for folder, reason in self.unreadable))
        return lines


_SHOWN = 3


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"


def _names(texts) -> str:
    texts = list(texts)
    more = f" and {len(texts) - _SHOWN} more" if len(texts) > _SHOWN else ""
    return "; ".join(texts[:_SHOWN]) + more


def walk_files(root: str | Path) -> FileTree:
    """Every file under ``root`` (a folder or a single file), following symbolic links; see the module docstring.

    ``root`` itself may be a link. A missing ``root`` gives an empty tree; callers check existence first to
    say so in their own words.
    """
    root = Path(root)
    tree = FileTree(root=root)
    if not root.is_dir():
        if root.is_file():
            tree.files.append(root)
        elif root.is_symlink():
            tree.dangling_links.append((root, os.readlink(root)))
        return tree
    real_root = os.path.realpath(root)
    # Real folder path -> the path it was first reached by; real file path -> likewise.
    folders_seen: dict[str, Path] = {real_root: root}
    files_seen: dict[str, Path] = {}
    # Depth first, a folder's files before its subfolders; each entry carries the real paths of its ancestors.
    stack: list[tuple[Path, str, frozenset[str]]] = [(root, real_root, frozenset({real_root}))]
    while stack:
        folder, real_folder, ancestors = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as e:
            tree.unreadable.append((folder, e.strerror or str(e)))
            continue
        subfolders: list[tuple[Path, str]] = []
        for entry in entries:
            path = Path(folder) / entry.name
            linked = entry.is_symlink()
            try:
                is_dir = entry.is_dir()  # follows the link
                is_file = not is_dir and entry.is_file()
            except OSError:
                is_dir = is_file = False
            if linked and not (is_dir or is_file) and not os.path.exists(path):
                tree.dangling_links.append((path, _link_target(path)))
                continue
            real = os.path.realpath(path) if linked else os.path.join(real_folder, entry.name)
            if is_dir:
                if real in ancestors:
                    tree.loops.append((path, Path(_link_target(path))))
                elif real in folders_seen:
                    tree.duplicates.append((path, folders_seen[real]))
                else:
                    folders_seen[real] = path
                    subfolders.append((path, real))
            elif is_file:
                if real in files_seen:
                    tree.duplicates.append((path, files_seen[real]))
                else:
                    files_seen[real] = path
                    tree.files.append(path)
        for path, real in reversed(subfolders):  # the stack pops the first subfolder first
            stack.append((path, real, ancestors | {real}))
    return tree


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"

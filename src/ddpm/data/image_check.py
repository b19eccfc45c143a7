"""Every file of an image folder is decoded once before training, so that a truncated PNG or a text file named .png
stops the run in one sentence before its first step, not with a traceback in the middle of epoch 1.

A bad file refuses the folder (naming the first bad files and how many there are) rather than being skipped: a data
set that silently shrinks is worse than a run that asks for a fix. The verdict for a folder is cached by its file
list, sizes and modification times (in $XDG_CACHE_HOME/ddpm/image_check, else ~/.cache/...), so a large folder is
decoded once, not at every run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

from ddpm.errors import ConfigError

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 5.0


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpm" / "image_check"


def folder_key(root: Path, files: list[Path]) -> str:
    """A digest of every file's path (relative to root), size and modification time."""
    h = hashlib.sha256(str(root.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def unreadable(path: Path) -> str | None:
    """Why `path` cannot be decoded as an image (None: it can)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # decodes every pixel: a truncated file fails here, not at open
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return f"{type(e).__name__}: {str(e).strip()[:80]}"
    return None


def check_images(root: str | Path, files: list[Path]) -> None:
    """Decode every file (or find the folder's verdict in the cache); ConfigError naming the bad ones."""
    root = Path(root)
    key = folder_key(root, files)
    stamp = cache_dir() / f"{key}.ok"
    if stamp.is_file():
        return
    bad, last = [], time.monotonic()
    for i, f in enumerate(files):
        problem = unreadable(f)
        if problem:
            bad.append((f, problem))
        if time.monotonic() - last > PROGRESS_EVERY_S:
            log.info("checking the images under %s: %d / %d", root, i + 1, len(files))
            last = time.monotonic()
    if bad:
        names = ", ".join(f"{f.relative_to(root)} ({why})" for f, why in bad[:3])
        raise ConfigError(
            f"{len(bad)} of {len(files)} files under {root.resolve()} are not readable images, e.g. {names}: "
            "remove or replace them"
        )
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(f"{root.resolve()}\n{len(files)} images\n")
    except OSError:  # no cache: the folder is checked again next time
        pass

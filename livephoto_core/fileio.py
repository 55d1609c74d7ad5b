"""Paths in and out: the check every input path passes, and atomic writes (a file appears complete
or not at all, and is never replaced unasked).

Inputs: photos, videos, weight files and model folders. Outputs: videos, sidecars, LivePhoto
checkpoints, training checkpoints.
"""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InvalidInputError, LivePhotoError, OutputExistsError


def check_input_path(
    path: str | os.PathLike,
    instead: str,
    error: type[LivePhotoError] = InvalidInputError,
    folders: bool = False,
) -> Path:
    """`path` as a Path if it names a file (or, with `folders`, a folder); else `error` saying what is
    there, and what to pass `instead` ("a weights file", "an image file", ...)."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path} does not exist; check the path")
    if folders and path.is_dir():
        return path
    if path.is_dir():
        raise error(f"{path} is a folder; pass {instead} instead")
    if not path.is_file():
        raise error(f"{path} is not a file; pass {instead} instead")
    return path


@contextmanager
def atomic_write(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it to ``path`` only if the block succeeds.

    The temporary name keeps the extension (``.out.webp.tmp-1a2b3c4d.webp``) so encoders that go
    by extension pick the right format. On any exception, KeyboardInterrupt included, the temporary
    file is removed and ``path`` is left as it was. Without ``overwrite`` an existing ``path`` is
    refused before any work, and again at the final step without a race: the file is published
    with ``os.link``, which fails if the name was taken meanwhile, so of two writers racing for one
    name exactly one wins and the other gets OutputExistsError.
    """
    with atomic_write_all([path], overwrite) as (temporary,):
        yield temporary


@contextmanager
def atomic_write_all(paths: list[str | os.PathLike], overwrite: bool = False) -> Iterator[list[Path]]:
    """``atomic_write`` for files that belong together (a photo and its video, a file and its sidecar).

    Yields one temporary per path; the files are published in order once the block succeeds. If
    publishing one fails (its name was taken meanwhile), those already published are removed again:
    the set appears whole or not at all.
    """
    finals = [Path(path) for path in paths]
    for final in finals:
        check_target(final, overwrite)
    temporaries, published = [], []
    try:
        for final in finals:
            temporaries.append(_create_temporary(final))
        yield temporaries
        for temporary, final in zip(temporaries, finals):
            fsync_file(temporary)
            if overwrite:
                os.replace(temporary, final)
            else:
                _publish_exclusively(temporary, final)
            published.append(final)
    except BaseException:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
        for final in published:
            final.unlink(missing_ok=True)
        raise
    for folder in dict.fromkeys(final.parent for final in finals):
        fsync_directory(folder)


def check_target(path: Path, overwrite: bool, role: str = "") -> None:
    """Refuse an output path that cannot take a new file, naming it (`role`: what it is to the output
    asked for, e.g. " (the settings sidecar of out.webp)") and the fix. Run before any work and again
    by every atomic write; what can still go wrong later (a full disk, a race) is caught there."""
    named = f"{path}{role}"
    _check_folder(path.parent, named)
    if path.is_symlink() and not path.exists():
        raise InvalidInputError(
            f"{named} is a symbolic link to {os.readlink(path)}, which does not exist; remove the link or choose "
            f"another name"
        )
    if path.is_dir():
        raise InvalidInputError(f"{named} is a folder; give a file name to write")
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(f"{path} already exists{role}; pass --overwrite or choose another name")


def _check_folder(folder: Path, named: str) -> None:
    """The folder an output goes into must exist, be a folder, and take new files."""
    if folder.is_dir():
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InvalidInputError(f"cannot write {named}: folder {folder} is not writable; choose another folder")
        return
    ancestor = next(parent for parent in (folder, *folder.parents) if os.path.lexists(parent))
    if ancestor.is_dir():
        raise InvalidInputError(f"cannot write {named}: folder {folder} does not exist; create it first or choose "
                                f"another folder")
    what = "a file, not a folder" if ancestor.exists() else "a symbolic link to nothing"
    raise InvalidInputError(f"cannot write {named}: {ancestor} is {what}; choose another folder")


def _create_temporary(final: Path) -> Path:
    temporary = final.with_name(f".{final.name}.tmp-{secrets.token_hex(4)}{final.suffix}")
    try:
        # O_EXCL: never adopt someone else's file; mode 0o666 lets the umask decide, as for any file.
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileNotFoundError:
        raise InvalidInputError(f"cannot write {final}: folder {final.parent} does not exist") from None
    except OSError as error:
        raise InvalidInputError(f"cannot write {final}: {error.strerror}") from None
    return temporary


def _publish_exclusively(temporary: Path, final: Path) -> None:
    """Give ``temporary`` the name ``final`` only if no file has that name; else OutputExistsError."""
    taken = OutputExistsError(f"{final} already exists; pass --overwrite or choose another name")
    try:
        os.link(temporary, final)
    except FileExistsError:
        raise taken from None
    except OSError:
        # No hard links here (FAT, some network shares): reserve the name with O_EXCL instead, then
        # move the finished file over our own empty reservation.
        try:
            os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise taken from None
        try:
            os.replace(temporary, final)
        except BaseException:
            final.unlink(missing_ok=True)
            raise
    else:
        temporary.unlink()


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def fsync_directory(folder: Path) -> None:
    """Make the new directory entry durable (POSIX; Windows has no directory handles to sync)."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

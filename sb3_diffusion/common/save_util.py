"""
Kill-safe files and clear errors for damaged ones.

Every file the algorithms write to a path (the model zip, the replay-buffer pickle) is first written
to a temporary file in the same folder (``.<name>.<random>.tmp``), flushed and fsynced, then renamed
over the final name (an atomic replacement on POSIX and Windows), and the folder is fsynced so that
the rename itself survives a power loss. A process killed at any moment therefore leaves, under the
final name, either the previous complete file or the new complete file, never a truncated one; at
worst a temporary file stays behind. File-like objects are written to as they are.
"""

import contextlib
import io
import os
import pathlib
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from typing import IO

PathOrFile = str | os.PathLike | io.BufferedIOBase

# Where the temporary files of an interrupted write can be recognised: .<final name>.<random>.tmp
TEMP_SUFFIX = ".tmp"


def is_path(path: object) -> bool:
    """Whether ``path`` names a file (as opposed to being an open file-like object)."""
    return isinstance(path, (str, os.PathLike))


def final_path(path: str | os.PathLike, suffix: str) -> pathlib.Path:
    """
    The file that Stable-Baselines3's ``open_path`` writes for ``path``: ``.<suffix>`` appended when the
    name has no suffix, and ``<path>_2`` (with SB3's warning) when that names a folder.
    """
    target = pathlib.Path(path)
    if target.suffix == "" and suffix:
        target = pathlib.Path(f"{target}.{suffix}")
    while target.is_dir():
        warnings.warn(f"Path '{target}' is a folder. Will save instead to {target}_2")
        target = pathlib.Path(f"{target}_2")
    return target


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide, so racy with other threads)
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: pathlib.Path) -> None:
    if os.name != "posix":  # Windows cannot open a folder; its rename is already durable enough
        return
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def atomic_write(target: pathlib.Path) -> Iterator[IO[bytes]]:
    """
    Open a temporary file next to ``target`` for writing (binary); when the block ends without an
    exception, flush and fsync it and rename it over ``target``. On an exception the temporary file is
    removed and ``target`` is left as it was. The new file gets the permissions that ``open(target, "wb")``
    would have given it (those of the file it replaces, or 0o666 less the umask).
    """
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        try:
            mode = os.stat(target).st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_folder(folder)


def _describe(path: PathOrFile) -> str:
    if is_path(path):
        return f"'{os.fspath(path)}'"  # type: ignore[arg-type]
    name = getattr(path, "name", None)
    return f"'{name}'" if isinstance(name, str) else repr(path)


@contextlib.contextmanager
def _readable(path: PathOrFile, suffix: str) -> Iterator[IO[bytes] | None]:
    """The file to check (``None``: nothing to check here, let SB3 report it), rewound afterwards."""
    if is_path(path):
        candidate = pathlib.Path(path)  # type: ignore[arg-type]
        if not candidate.is_file() and pathlib.Path(f"{candidate}.{suffix}").is_file():
            candidate = pathlib.Path(f"{candidate}.{suffix}")  # SB3 tries the suffix too
        if not candidate.is_file():
            yield None  # SB3 raises FileNotFoundError with the name
            return
        with open(candidate, "rb") as file:
            yield file
        return
    file = path  # type: ignore[assignment]
    if not (hasattr(file, "seekable") and file.seekable() and file.readable()):
        yield None
        return
    position = file.tell()
    try:
        yield file  # type: ignore[misc]
    finally:
        file.seek(position)


def check_model_file(path: PathOrFile) -> None:
    """
    Raise a ``ValueError`` that names the file when ``path`` is not a complete model file: not a zip
    archive (for example truncated: a truncated model zip may even expose the zip inside one of its
    entries), missing the entries that ``save`` writes, or an entry whose CRC does not match (corrupted).
    """
    with _readable(path, "zip") as file:
        if file is None:
            return
        name = _describe(path)
        advice = (
            "It was probably cut short while being written (a process killed during save by a version without "
            "kill-safe saves, a full disk, an incomplete copy): load an earlier checkpoint instead."
        )
        try:
            with zipfile.ZipFile(file) as archive:
                names = set(archive.namelist())
                missing = {"data", "policy.pth"} - names
                if missing:
                    raise ValueError(
                        f"The model file {name} is truncated or is not a model saved by save(): it has no "
                        f"{' and no '.join(repr(entry) for entry in sorted(missing))} entry. {advice}"
                    )
                corrupted = archive.testzip()
        except zipfile.BadZipFile as error:
            raise ValueError(f"The model file {name} is not a complete zip archive ({error}). {advice}") from error
        except (EOFError, OSError) as error:
            raise ValueError(f"The model file {name} could not be read to its end ({error}). {advice}") from error
        if corrupted is not None:
            raise ValueError(
                f"The model file {name} is corrupted: the checksum of its entry '{corrupted}' does not match its "
                "content. Load an earlier checkpoint instead."
            )


def load_pickle_error(path: PathOrFile, error: BaseException) -> ValueError:
    """The error for a replay-buffer file that could not be unpickled."""
    return ValueError(
        f"The replay buffer file {_describe(path)} could not be loaded ({type(error).__name__}: {error}): it is "
        "truncated or corrupted (for example cut short by a process killed while writing it with a version "
        "without kill-safe saves). Load the replay buffer of an earlier checkpoint instead."
    )


# What unpickling a truncated or corrupted file raises (a missing class raises AttributeError or
# ImportError instead, which is not damage and is left as it is)
PICKLE_ERRORS = (pickle.UnpicklingError, EOFError)

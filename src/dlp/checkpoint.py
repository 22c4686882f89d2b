"""Self-describing checkpoints: the model family and its config travel with the weights.

A checkpoint is a dict saved with `torch.save` and read with `weights_only=True`:
`{"format", "version", "arch", "config", "model", ...}` plus whatever the trainer adds (train config, optimisers,
schedulers, epoch, step, RNG states, metrics). `arch` names the model family (`dlp.list_models()`); checkpoints
written before it existed are DLP v1 ("dlp"). Writes are atomic: a crash mid-write never leaves a broken file, and the
file gets the permissions of any other new file (the umask), not those of the temporary file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from dlp import __version__

FORMAT = "deep-latent-particles/1"
LEGACY_ARCH = "dlp"  # checkpoints without "arch" were written when DLP v1 was the only family


class CheckpointError(ValueError):
    """A file that is not a readable deep-latent-particles checkpoint."""


_PLAIN = (torch.Tensor, str, int, float, bool, type(None))


def _plain(value: Any, where: str) -> Any:
    """Values that `torch.load(weights_only=True)` reads back: tensors, numbers, strings, and containers of them."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, where) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise CheckpointError(f"{where} is a {type(value).__name__}, which a weights-only checkpoint cannot hold.")


def _new_file_mode() -> int:
    """The mode `open()` gives a new file: 0o666 minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call `write(temporary path)` in `path`'s folder, flush it to disk and rename it to `path`: a crash never leaves a
    half-written file under the final name. The file gets the permissions of any new file (the umask), not the
    temporary file's 0600; on failure the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _new_file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, **extra: Any) -> Path:
    """Atomically write `model` (its family, config and weights) and extra state (tensors, numbers, strings,
    containers)."""
    from dlp.registry import family_of

    extra = {key: _plain(value, key) for key, value in extra.items()}
    payload = {"format": FORMAT, "version": __version__, "arch": family_of(model).name,
               "config": model.config.to_dict(), "model": model.state_dict(), **extra}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, a run directory of `dlp train` (its best.pt, else its last.pt), or a `save_pretrained`
    folder (returned as it is)."""
    from dlp.pretrained import is_pretrained_folder

    path = Path(path).expanduser()
    if is_pretrained_folder(path):
        return path
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            for candidate in (path / "checkpoints" / name, path / name):
                if candidate.is_file():
                    return candidate
        raise CheckpointError(f"{path} is a folder without checkpoints/best.pt or checkpoints/last.pt; pass a run "
                              "directory of `dlp train` or a .pt file.")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .pt file or a run directory written by "
                              "`dlp train`.")
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict, validated; raises `CheckpointError` for missing, corrupt or foreign files.

    `path` is a .pt file, a run directory (its best.pt, else last.pt) or a `save_pretrained` folder. Checkpoints
    without "arch" are DLP v1's.
    """
    path = resolve_checkpoint_path(path)
    if path.is_dir():
        from dlp.pretrained import read_pretrained

        return read_pretrained(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or non-torch files
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}); it may be truncated or not a torch file."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a deep-latent-particles checkpoint; convert official DLP weights with "
            "`dlp convert-official IN.pth --preset NAME -o OUT.pt`."
        )
    payload.setdefault("arch", LEGACY_ARCH)
    return payload


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the model stored in a checkpoint (config from the file, strict state-dict load), in eval mode."""
    return model_from_checkpoint(read_checkpoint(path, map_location), map_location, source=path)


def model_from_checkpoint(payload: dict[str, Any], map_location: str | torch.device = "cpu", *,
                          source: str | os.PathLike = "the checkpoint"):
    """The model of an already read checkpoint (`read_checkpoint`), for callers that also need its other entries."""
    from dlp.registry import get_family

    model = get_family(payload.get("arch", LEGACY_ARCH)).build_model(payload["config"])
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the weights in {source} do not match its config: {exc}") from exc
    return model.to(map_location).eval()

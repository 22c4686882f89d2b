"""Pretrained weights the Hugging Face way: a folder of `config.json` + `model.safetensors`, local or on the Hub.

>>> model.save_pretrained("my-dlp")                   # or dlp.save_pretrained(model, "my-dlp")
>>> model = dlp.from_pretrained("my-dlp")             # a local folder ...
>>> model = dlp.from_pretrained("someorg/dlp-celeba") # ... or a Hub repository (downloaded once, then cached)
>>> model.push_to_hub("me/dlp-celeba")                # publish (needs `huggingface-cli login` or a token)

`config.json` holds `{"format", "arch", "config", "version"}`: the model family (`dlp.list_models()`) and its config.
`model.safetensors` holds the state dict, dtypes kept (DLPv2's float64 prior buffer stays float64). Loading reads
only these two files (never a pickle, never code from the folder or the repository), rebuilds the model from the
config and loads the weights strictly: every entry present, no extra one, each with the model's shape and dtype.

Hub access goes through `huggingface_hub` (with its cache, `HF_HOME`/`HF_HUB_CACHE`, tokens and `HF_HUB_OFFLINE`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from dlp import __version__
from dlp.checkpoint import FORMAT, CheckpointError, atomic_write

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FILES = (CONFIG_NAME, WEIGHTS_NAME)


class PretrainedError(CheckpointError):
    """A folder or Hub repository that does not hold a loadable deep-latent-particles model (one sentence)."""


# ----------------------------------------------------------------------------------------------------------------
# saving

def _plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as safetensors can store it: detached, on the CPU, contiguous, no two entries sharing memory
    (safetensors refuses shared storage: a tied weight is stored under each of its names, and loading copies the
    same values into each)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise PretrainedError(f"state-dict entry {name!r} is a {type(tensor).__name__}, not a tensor; "
                                  "save_pretrained stores tensors only.")
        tensor = tensor.detach().cpu().contiguous()
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if storage.nbytes() and key in seen:
            tensor = tensor.clone()
        seen.add(key)
        out[name] = tensor
    return out


def save_pretrained(model: torch.nn.Module, directory: str | os.PathLike) -> Path:
    """Write `model` to `directory` (created if needed): `config.json` (family and config) and `model.safetensors`.

    Returns the directory. Files already there under other names are left alone; the two files are replaced
    atomically (weights first, so a folder whose config.json is new also has the new weights).
    """
    from safetensors.torch import save_file

    from dlp.registry import family_of

    family = family_of(model)
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "arch": family.name, "config": model.config.to_dict(), "version": __version__}
    text = json.dumps(config, indent=2) + "\n"
    tensors = _plain_tensors(model.state_dict())
    # one metadata key: safetensors writes several in random order, and the same model should give the same bytes
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return directory


# ----------------------------------------------------------------------------------------------------------------
# loading

def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def _is_repo_id(name: str) -> bool:
    """A Hub repository id, 'name' or 'org/name' (a path like './x', '/x', 'a/b/c' or 'x/..' is not one)."""
    return bool(_REPO_ID.match(name)) and ".." not in name and not name.endswith((".", "-"))


def _hub_errors() -> dict[str, Any]:
    try:
        from huggingface_hub import errors
    except ImportError:  # huggingface_hub < 0.23
        from huggingface_hub import utils as errors
    names = ("LocalEntryNotFoundError", "EntryNotFoundError", "RepositoryNotFoundError", "RevisionNotFoundError",
             "HFValidationError", "OfflineModeIsEnabled", "HfHubHTTPError")
    return {name: getattr(errors, name, ()) for name in names}  # () catches nothing


def _download(repo_id: str, *, revision: str | None, cache_dir: str | os.PathLike | None, token: str | bool | None,
              local_files_only: bool | None) -> dict[str, Path]:
    """config.json and model.safetensors of `repo_id` (paths in the huggingface_hub cache), of one commit."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise PretrainedError(f"{repo_id!r} is not a local folder, and loading from the Hugging Face Hub needs "
                              "huggingface_hub (pip install huggingface_hub).") from None

    offline = _env_true("HF_HUB_OFFLINE")  # read now: huggingface_hub reads it once, at import
    local_only = offline if local_files_only is None else bool(local_files_only)
    err = _hub_errors()
    where = f"{repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    paths: dict[str, Path] = {}
    for name in FILES:
        try:
            paths[name] = path = Path(hf_hub_download(
                repo_id, name, revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_only,
                library_name="deep-latent-particles", library_version=__version__))
        except err["HFValidationError"] as exc:
            raise PretrainedError(f"{repo_id!r} is neither a local folder nor a valid Hugging Face Hub repository "
                                  f"id ({exc}); pass a folder written by save_pretrained or an id like "
                                  "'org/name'.") from None
        except (err["LocalEntryNotFoundError"], err["OfflineModeIsEnabled"]) as exc:
            why = ("offline mode is on (HF_HUB_OFFLINE or local_files_only)" if local_only
                   else "the Hugging Face Hub cannot be reached")
            cache = f"the cache {cache_dir}" if cache_dir else "the Hugging Face cache"
            what = "it" if name == CONFIG_NAME else f"its {name}"  # nothing cached / half cached
            raise PretrainedError(
                f"cannot load {where}: {what} is not in {cache} and {why}; connect to the network (and unset "
                "HF_HUB_OFFLINE) to download it once, or pass a local folder written by save_pretrained."
            ) from exc
        except err["RepositoryNotFoundError"] as exc:
            raise PretrainedError(f"there is no Hugging Face Hub repository {repo_id!r} (or it is private or gated: "
                                  "log in with `huggingface-cli login` or pass token=...), and no local folder of "
                                  "that name.") from exc
        except err["RevisionNotFoundError"] as exc:
            raise PretrainedError(f"the Hub repository {repo_id!r} has no revision {revision!r}; pass an existing "
                                  "branch, tag or commit.") from exc
        except err["EntryNotFoundError"] as exc:
            raise PretrainedError(f"the Hub repository {where} has no {name}, so it is not a deep-latent-particles "
                                  "model; such models are published with dlp.push_to_hub.") from exc
        except err["HfHubHTTPError"] as exc:
            raise PretrainedError(f"the Hugging Face Hub answered an error for {where} "
                                  f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); try again "
                                  "later or pass a local folder written by save_pretrained.") from exc
        if path.parent.parent.name == "snapshots" and _COMMIT.match(path.parent.name):
            revision = path.parent.name  # the weights of the commit the config came from, even if a branch moves on
    return paths


def _read_config(path: Path, source: str) -> dict[str, Any]:
    if not path.is_file():
        raise PretrainedError(f"{source} has no {CONFIG_NAME}; pass a folder written by save_pretrained "
                              "(a .pt checkpoint loads with dlp.load_checkpoint).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PretrainedError(f"{path} is not readable JSON ({exc}); re-save the model with save_pretrained.") \
            from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PretrainedError(f"{path} is not a deep-latent-particles config (its format is "
                              f"{data.get('format') if isinstance(data, dict) else type(data).__name__!r}, expected "
                              f"{FORMAT!r}); pass a folder written by save_pretrained.")
    if not isinstance(data.get("arch"), str) or not isinstance(data.get("config"), dict):
        raise PretrainedError(f"{path} lacks the model family (\"arch\") or its config (\"config\"); re-save the "
                              "model with save_pretrained.")
    return data


def _read_weights(path: Path, source: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise PretrainedError(f"{source} has no {WEIGHTS_NAME}; pass a folder written by save_pretrained "
                              "(weights are read from safetensors only, never from pickles).")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise PretrainedError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc}); it may be "
                              "truncated, or not written by save_pretrained.") from None


def _load_strict(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True), plus the dtype check it lacks (it would cast silently)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

        parts = ([f"missing {some(missing)}"] if missing else []) + \
            ([f"unexpected {some(unexpected)}"] if unexpected else [])
        raise PretrainedError(f"the weights in {source} do not match its config ({'; '.join(parts)}).")
    for name, tensor in weights.items():
        want = expected[name]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise PretrainedError(f"the weights in {source} do not match its config: {name} is "
                                  f"{tensor.dtype} {tuple(tensor.shape)}, the model expects {want.dtype} "
                                  f"{tuple(want.shape)}.")
    model.load_state_dict(weights, strict=True)


def is_pretrained_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by `save_pretrained`."""
    folder = Path(path).expanduser()
    return folder.is_dir() and all((folder / name).is_file() for name in FILES)


def read_pretrained(folder: str | os.PathLike) -> dict[str, Any]:
    """A `save_pretrained` folder as a checkpoint dict (`{"format", "arch", "config", "model"}`, as
    `dlp.checkpoint.read_checkpoint` returns), so that every command that takes a checkpoint takes such a folder."""
    from dlp.checkpoint import FORMAT as CHECKPOINT_FORMAT

    folder = Path(folder).expanduser()
    data = _read_config(folder / CONFIG_NAME, str(folder))
    return {"format": CHECKPOINT_FORMAT, "arch": data["arch"], "config": data["config"],
            "model": _read_weights(folder / WEIGHTS_NAME, str(folder))}


def from_pretrained(name_or_path: str | os.PathLike, *, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                    local_files_only: bool | None = None, token: str | bool | None = None):
    """The model saved in a local folder (by `save_pretrained`) or in a Hugging Face Hub repository, in eval mode.

    `name_or_path` is a folder, else a Hub repository id ("org/name"), downloaded through `huggingface_hub` (only
    config.json and model.safetensors, at `revision`, into `cache_dir` or the Hugging Face cache). With
    `local_files_only` (default: `HF_HUB_OFFLINE`) only the cache is read. Loading is strict and executes no code.
    """
    from dlp.config import ConfigError
    from dlp.registry import get_family

    text = os.fspath(name_or_path)
    folder = Path(text).expanduser()
    if folder.is_dir():
        source = str(folder)
        paths = {name: folder / name for name in FILES}
    elif isinstance(name_or_path, os.PathLike) or folder.exists() or not _is_repo_id(text):
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise PretrainedError(f"{folder} {what}; pass a folder written by save_pretrained or a Hub repository id "
                              "like 'org/name'.")
    else:
        paths = _download(text, revision=revision, cache_dir=cache_dir, token=token,
                          local_files_only=local_files_only)
        source = f"Hub repository {text!r}" + (f" (revision {revision!r})" if revision else "")

    data = _read_config(paths[CONFIG_NAME], source)
    try:
        family = get_family(data["arch"])
        model = family.build_model(data["config"])
    except ConfigError as exc:
        raise PretrainedError(f"{source} holds a model this version of deep-latent-particles cannot build: {exc}") \
            from None
    _load_strict(model, _read_weights(paths[WEIGHTS_NAME], source), source)
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------------------------
# publishing

def push_to_hub(model: torch.nn.Module, repo_id: str, *, private: bool = False, token: str | None = None,
                revision: str | None = None, commit_message: str = "Upload deep-latent-particles model") -> str:
    """Publish `model` (config.json + model.safetensors) to the Hub repository `repo_id`, created if missing.

    Needs a write token (`huggingface-cli login`, $HF_TOKEN or `token=`). Returns the URL of the commit.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="dlp-push-") as tmp:
        save_pretrained(model, tmp)
        info = api.upload_folder(folder_path=tmp, repo_id=repo_id, repo_type="model", revision=revision,
                                 commit_message=commit_message, allow_patterns=list(FILES))
    return str(getattr(info, "commit_url", info))


class PretrainedMixin:
    """`save_pretrained`, `push_to_hub` and `from_pretrained` as methods of a model (DLP, DLPv2, DDLP)."""

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json and model.safetensors to `directory` (see `dlp.save_pretrained`)."""
        return save_pretrained(self, directory)  # type: ignore[arg-type]

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    revision: str | None = None, commit_message: str = "Upload deep-latent-particles model") -> str:
        """Publish the model to the Hub repository `repo_id` (see `dlp.push_to_hub`)."""
        return push_to_hub(self, repo_id, private=private, token=token, revision=revision,  # type: ignore[arg-type]
                           commit_message=commit_message)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any):
        """`dlp.from_pretrained`, checking that the folder or repository holds a model of this class."""
        model = from_pretrained(name_or_path, **kwargs)
        if not isinstance(model, cls):
            raise PretrainedError(f"{name_or_path} holds a {type(model).__name__}, not a {cls.__name__}; load it "
                                  "with dlp.from_pretrained.")
        return model

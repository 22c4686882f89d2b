"""Pretrained folders (config.json + model.safetensors): local round trips, the Hub cache offline, clear errors."""

from __future__ import annotations

import json
import pickle
import socket
from pathlib import Path

import pytest
import torch

import dlp
from dlp import pretrained
from dlp.models.ddlp import DDLP, DDLPConfig
from dlp.models.dlp_v1.model import DLP
from dlp.models.dlpv2 import DLPv2, DLPv2Config
from dlp.pretrained import CONFIG_NAME, WEIGHTS_NAME, PretrainedError, PretrainedMixin
from dlp.registry import family_of
from tests.conftest import tiny_config

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny_dlpv2() -> DLPv2:
    return DLPv2(DLPv2Config(image_size=32, enc_channels=(8, 8), prior_channels=(8, 8), patch_size=8, n_kp_enc=4,
                             n_kp_prior=6, learned_feature_dim=3, bg_learned_feature_dim=2, anchor_s=0.25))


def tiny_ddlp() -> DDLP:
    return DDLP(DDLPConfig(image_size=32, enc_channels=(8, 8), prior_channels=(8, 8), patch_size=8, n_kp_enc=4,
                           n_kp_prior=6, learned_feature_dim=3, bg_learned_feature_dim=2, anchor_s=0.25,
                           timestep_horizon=3, num_static_frames=2, pint_layers=1, pint_heads=2, pint_dim=16))


MODELS = {
    "dlp-object": lambda: DLP(tiny_config("object")),
    "dlp-masked": lambda: DLP(tiny_config("masked")),
    "dlp-anchored": lambda: DLP(tiny_config("anchored")),
    "dlpv2": tiny_dlpv2,
    "ddlp": tiny_ddlp,
}


@pytest.fixture(params=sorted(MODELS))
def model(request) -> torch.nn.Module:
    torch.manual_seed(3)
    model = MODELS[request.param]()
    with torch.no_grad():  # weights and buffers no constructor would reproduce: a load that did nothing is caught
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.01)
            else:
                tensor.add_(7)
    return model


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails (and is recorded)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("networking is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def assert_identical(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert type(a) is type(b)
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name


def hub_cache(tmp_path: Path, model: torch.nn.Module, repo: str = "someorg/somemodel") -> Path:
    """A huggingface_hub cache holding `repo` at COMMIT (refs/main -> COMMIT), as a download would leave it."""
    cache = tmp_path / "hub"
    org, name = repo.split("/")
    storage = cache / f"models--{org}--{name}"
    model.save_pretrained(storage / "snapshots" / COMMIT)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    return cache


# ----------------------------------------------------------------------------------------------------------------
# local folders

def test_round_trip_through_a_local_folder_is_bit_identical(tmp_path, model):
    folder = model.save_pretrained(tmp_path / "pretrained")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["format"] == "deep-latent-particles/1" and config["version"] == dlp.__version__
    assert config["arch"] == family_of(model).name and config["config"] == model.config.to_dict()
    loaded = dlp.from_pretrained(folder)
    assert_identical(model, loaded)
    assert not loaded.training
    assert_identical(model, type(model).from_pretrained(str(folder)))  # the class method, on a str path
    # the module-level function writes the same files
    dlp.save_pretrained(model, tmp_path / "again")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes()


def test_float64_prior_buffer_keeps_its_dtype(tmp_path):
    model = tiny_dlpv2()
    float64 = [name for name, t in model.state_dict().items() if t.dtype == torch.float64]
    assert float64  # the official float64 scale prior
    from safetensors.torch import load_file

    stored = load_file(model.save_pretrained(tmp_path) / WEIGHTS_NAME)
    assert all(stored[name].dtype == torch.float64 for name in float64)


def test_models_have_the_mixin_and_dlp_exports_it():
    for cls in (DLP, DLPv2, DDLP):
        assert issubclass(cls, PretrainedMixin)
    assert {"from_pretrained", "save_pretrained", "push_to_hub"} <= set(dir(dlp))
    assert dlp.from_pretrained is pretrained.from_pretrained


def test_shared_and_non_contiguous_tensors_are_saved(tmp_path):
    """Tied weights (one storage, two names) and views, which safetensors refuses as such, round-trip."""
    model = DLP(tiny_config("masked"))
    state = model.state_dict()
    name = next(k for k, v in state.items() if v.dim() == 4)
    from dlp.pretrained import _plain_tensors

    tied = {"a": state[name], "b": state[name], "t": state[name].transpose(0, 1)}
    plain = _plain_tensors(tied)
    from safetensors.torch import load_file, save_file

    save_file(plain, tmp_path / "x.safetensors")
    back = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(back[k], tied[k]) for k in tied)


def test_wrong_class_and_wrong_dtype_are_refused(tmp_path):
    folder = tiny_dlpv2().save_pretrained(tmp_path / "v2")
    with pytest.raises(PretrainedError, match="not a DDLP"):
        DDLP.from_pretrained(folder)
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / WEIGHTS_NAME)
    name = next(k for k, v in weights.items() if v.dtype == torch.float64)
    weights[name] = weights[name].float()  # load_state_dict alone would cast it back silently
    save_file(weights, folder / WEIGHTS_NAME)
    with pytest.raises(PretrainedError, match=f"{name} is torch.float32"):
        dlp.from_pretrained(folder)


def test_strict_load_missing_and_unexpected_entries(tmp_path):
    folder = DLP(tiny_config("object")).save_pretrained(tmp_path / "m")
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / WEIGHTS_NAME)
    dropped = sorted(weights)[0]
    del weights[dropped]
    weights["extra.weight"] = torch.zeros(1)
    save_file(weights, folder / WEIGHTS_NAME)
    with pytest.raises(PretrainedError, match=f"missing {dropped}.*unexpected extra.weight"):
        dlp.from_pretrained(folder)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: {**c, "arch": "no-such-family"}, "unknown model family 'no-such-family'"),
        (lambda c: {k: v for k, v in c.items() if k != "arch"}, "lacks the model family"),
        (lambda c: {**c, "format": "something-else/3"}, "not a deep-latent-particles config"),
        (lambda c: {**c, "config": {**c["config"], "no_such_key": 1}}, "unknown DLPConfig keys"),
        (lambda c: [1, 2], "not a deep-latent-particles config"),
    ],
)
def test_bad_config_json_is_one_clear_sentence(tmp_path, change, message):
    folder = DLP(tiny_config("object")).save_pretrained(tmp_path / "m")
    config = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CONFIG_NAME).write_text(json.dumps(change(config)))
    with pytest.raises(PretrainedError, match=message) as info:
        dlp.from_pretrained(folder)
    assert "\n" not in str(info.value)


def test_missing_files_and_bad_paths(tmp_path):
    folder = DLP(tiny_config("object")).save_pretrained(tmp_path / "m")
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(PretrainedError, match="has no model.safetensors"):
        dlp.from_pretrained(folder)
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(PretrainedError, match="has no config.json"):
        dlp.from_pretrained(folder)
    with pytest.raises(PretrainedError, match="does not exist"):
        dlp.from_pretrained(tmp_path / "nowhere")  # a Path is never a repository id
    with pytest.raises(PretrainedError, match="does not exist"):
        dlp.from_pretrained("./nowhere/at/all")
    (tmp_path / "file").write_text("x")
    with pytest.raises(PretrainedError, match="is a file"):
        dlp.from_pretrained(str(tmp_path / "file"))


class Exploit:
    """Unpickling this runs code: it would create the marker file."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickles_are_never_loaded(tmp_path):
    model = DLP(tiny_config("object"))
    folder = model.save_pretrained(tmp_path / "m")
    marker = tmp_path / "pwned"
    Exploit.marker = marker
    payload = pickle.dumps(Exploit())
    for name in ("pytorch_model.bin", "model.pt", "model.pkl"):
        (folder / name).write_bytes(payload)  # next to the real files: ignored
    assert_identical(model, dlp.from_pretrained(folder))
    (folder / WEIGHTS_NAME).write_bytes(payload)  # in place of the weights: refused, not unpickled
    with pytest.raises(PretrainedError, match="not a readable safetensors file"):
        dlp.from_pretrained(folder)
    torch.save({"model": Exploit()}, folder / WEIGHTS_NAME)
    with pytest.raises(PretrainedError, match="not a readable safetensors file"):
        dlp.from_pretrained(folder)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------------
# the Hugging Face Hub, offline

def test_round_trip_through_the_hub_cache_offline(tmp_path, model, monkeypatch, no_network):
    cache = hub_cache(tmp_path, model)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local folder named someorg/somemodel
    loaded = dlp.from_pretrained("someorg/somemodel", cache_dir=cache)
    assert_identical(model, loaded)
    assert_identical(model, dlp.from_pretrained("someorg/somemodel", cache_dir=cache, revision=COMMIT))
    assert_identical(model, type(model).from_pretrained("someorg/somemodel", cache_dir=str(cache)))
    assert no_network == []


def test_local_files_only_without_the_environment_variable(tmp_path, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = tiny_dlpv2()
    cache = hub_cache(tmp_path, model, "org/v2")
    assert_identical(model, dlp.from_pretrained("org/v2", cache_dir=cache, local_files_only=True))
    assert no_network == []


def test_a_local_folder_wins_over_a_repository_id(tmp_path, monkeypatch, no_network):
    model = DLP(tiny_config("masked"))
    monkeypatch.chdir(tmp_path)
    model.save_pretrained(tmp_path / "someorg" / "somemodel")
    assert_identical(model, dlp.from_pretrained("someorg/somemodel", cache_dir=tmp_path / "empty-cache"))
    assert no_network == []


def test_offline_with_nothing_cached_is_one_clear_sentence(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PretrainedError) as info:
        dlp.from_pretrained("someorg/uncached", cache_dir=tmp_path / "hub")
    message = str(info.value)
    assert "'someorg/uncached'" in message and "is not in the cache" in message and "offline" in message
    assert "HF_HUB_OFFLINE" in message and "local folder" in message and "\n" not in message
    assert no_network == []


def test_unreachable_hub_with_nothing_cached_is_one_clear_sentence(tmp_path, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PretrainedError) as info:
        dlp.from_pretrained("someorg/uncached", cache_dir=tmp_path / "hub")
    message = str(info.value)
    assert "'someorg/uncached'" in message and "cannot be reached" in message and "\n" not in message


def test_a_partly_cached_repository_names_the_missing_file(tmp_path, monkeypatch, no_network):
    cache = hub_cache(tmp_path, DLP(tiny_config("object")))
    (cache / "models--someorg--somemodel" / "snapshots" / COMMIT / WEIGHTS_NAME).unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PretrainedError, match="'someorg/somemodel': its model.safetensors is not in the cache"):
        dlp.from_pretrained("someorg/somemodel", cache_dir=cache)


# ----------------------------------------------------------------------------------------------------------------
# publishing (no network: HfApi is replaced)

def test_push_to_hub_uploads_exactly_the_two_files(monkeypatch, no_network):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, *, folder_path, repo_id, **kwargs):
            files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            calls.append(("upload_folder", repo_id, kwargs, files))
            return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model = tiny_dlpv2()
    url = model.push_to_hub("me/dlpv2-tiny", private=True, token="hf_x", commit_message="tiny")
    assert url == "https://huggingface.co/me/dlpv2-tiny/commit/abc"
    assert calls[0] == ("init", "hf_x")
    assert calls[1] == ("create_repo", "me/dlpv2-tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    _, repo, kwargs, files = calls[2]
    assert repo == "me/dlpv2-tiny" and kwargs["commit_message"] == "tiny"
    assert sorted(files) == [CONFIG_NAME, WEIGHTS_NAME]
    assert json.loads(files[CONFIG_NAME])["arch"] == "dlpv2"
    assert no_network == []

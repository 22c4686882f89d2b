"""The measures and tolerances of the parity-v2 fixture README, shared by the DLPv2 and DDLP parity tests.

Tolerances are `max(calibrated, floor)`: outputs and rollout `max|ours - ref| / max|ref|`; losses relative (psnr
absolute, dB); extra loss terms relative to `max(|ref|, 1e-3 * max(|loss_kl_kp|, |loss_kl_feat|, |kl|))`; gradients
per parameter `max|delta| <= t_max * max|g|` and per group `||delta|| / ||g|| <= t_group`, structurally zero ones
`<= 1e-5 max|g|`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from dlp.compat.ddlp import (
    load_official,
    official_loss,
    official_outputs,
    official_param_names,
)

SPEC = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dlpv2-ddlp-model.md"
FLOORS = {"outputs": 1e-4, "losses": 1e-4, "loss_terms_extra": 1e-3, "grad_max": 1e-2, "grad_group": 1e-2,
          "rollout": 1e-4}


def scale_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def tolerance(fx, record: str, kind: str, key: str | None = None) -> float:
    table = fx["tolerances"][record] if kind == "rollout" else fx["tolerances"][record][kind]
    return max(table if key is None else table[key], FLOORS[kind])


def fresh_model(fx, record: str):
    model = load_official(fx["state_dict"], fx["hparams"])
    model.train(fx[record]["mode"] == "train")
    if fx[record]["seed"] is not None:
        torch.manual_seed(fx[record]["seed"])
    return model


def check_outputs(fx, record: str) -> None:
    """Every output of the record within its tolerance."""
    model = fresh_model(fx, record)
    with torch.no_grad():
        ours = official_outputs(model, fx["x"], **fx[record]["call_kwargs"])
    ref = fx[record]["outputs"]
    assert set(ref) <= set(ours)
    for key, value in ref.items():
        assert ours[key].shape == value.shape, key
        err = scale_error(ours[key], value)
        assert err <= tolerance(fx, record, "outputs", key), f"{record} {key}: e = {err:.2e}"


def check_losses_and_gradients(fx, record: str):
    """Every loss, extra loss term and (where the record has them) gradient within its tolerance. Returns our
    gradients and the reference ones by official parameter name, or None for a record without gradients."""
    rec = fx[record]
    model = fresh_model(fx, record)
    losses = official_loss(model, fx["x"], **rec["loss_kwargs"])
    for key, value in rec["losses"].items():
        diff = abs(losses[key].item() - value.item())
        err = diff if key == "psnr" else diff / abs(value.item())
        assert err <= tolerance(fx, record, "losses", key), f"{record} {key}: {err:.2e}"
    ref = rec["losses"]
    scale = 1e-3 * max(abs(ref["loss_kl_kp"].item()), abs(ref["loss_kl_feat"].item()), abs(ref["kl"].item()))
    assert set(rec["loss_terms_extra"]) <= set(losses)
    for key, value in rec["loss_terms_extra"].items():
        err = abs(losses[key].item() - value.item()) / max(abs(value.item()), scale)
        assert err <= tolerance(fx, record, "loss_terms_extra", key), f"{record} {key}: {err:.2e}"
    if not rec.get("grads"):
        return None
    losses["loss"].backward()
    names = official_param_names(model)
    grads = {names[n]: p.grad for n, p in model.named_parameters()}
    assert [k for k, g in grads.items() if g is None] == list(rec["params_without_grad"])
    expected = {k: v.double() for k, v in rec["grads"].items()}
    for key, factors in rec["grads_factored"].items():  # dL/dW = delta^T @ input over every call of the layer
        expected[key] = factors["delta"].double().T @ factors["input"].double()
    assert set(expected) == set(grads)
    g_max = max(g.abs().max().item() for g in expected.values())
    zero = set(fx["meta"]["grads_structurally_zero"])
    for key in zero:
        assert grads[key].abs().max().item() <= 1e-5 * g_max, key
    t_max = tolerance(fx, record, "grad_max")
    for key, value in expected.items():
        if key not in zero:
            worst = (grads[key].double() - value).abs().max().item()
            assert worst <= t_max * g_max, f"{key}: max|delta| = {worst / g_max:.2e} max|g|"
    for group, keys in parameter_groups(expected).items():
        delta = torch.cat([(grads[k].double() - expected[k]).flatten() for k in keys]).norm()
        norm = torch.cat([expected[k].flatten() for k in keys]).norm()
        rel = (delta / norm).item()
        assert rel <= tolerance(fx, record, "grad_group", group), f"{group}: ||delta||/||g|| = {rel:.2e}"
    return grads, expected


def parameter_groups(names) -> dict[str, list[str]]:
    """Official parameter names grouped by their first two components (e.g. `dyn_module.particle_decoder`)."""
    groups: dict[str, list[str]] = {}
    for key in names:
        groups.setdefault(".".join(key.split(".")[:2]), []).append(key)
    return groups


def parse_state_dict_listing(title: str) -> dict[str, tuple[int, ...]]:
    """Expand a state-dict listing of the spec (§9) into {key: shape} (`{0..5}` block ranges included)."""
    text = SPEC.read_text()
    block = text.split(f"#### {title}", 1)[1].split("```", 2)[1]
    lines: list[str] = []
    for line in block.strip().splitlines():
        if m := re.search(r"\{(\d+)\.\.(\d+)\}", line):
            lines += [line.replace(m[0], str(i)) for i in range(int(m[1]), int(m[2]) + 1)]
        else:
            lines.append(line.strip())
    shapes: dict[str, tuple[int, ...]] = {}

    def dims(s: str) -> tuple[int, ...]:
        return tuple(int(v) for v in s.split(",") if v.strip())

    for line in lines:
        if line.endswith(".*  (alias: the same tensors as every fg_module.object_dec.main.* entry above, same order)"):
            for key in [k for k in shapes if k.startswith("fg_module.object_dec.main.")]:
                shapes[key.replace(".main.", ".decode.", 1)] = shapes[key]
            continue
        if m := re.fullmatch(r"(\S+)\.\{weight \[([\d, ]*)\], bias \[([\d, ]*)\]\}", line):
            shapes[f"{m[1]}.weight"], shapes[f"{m[1]}.bias"] = dims(m[2]), dims(m[3])
            continue
        m = re.fullmatch(r"(\S+) \[([\d, ]*)\](?: \(float64\))?(?: \+ (\S+) \[([\d, ]*)\])?", line)
        assert m, line
        shapes[m[1]] = dims(m[2])
        if m[3] == ".bias":
            shapes[m[1].rsplit(".", 1)[0] + ".bias"] = dims(m[4])
        elif m[3]:
            base = m[1].rsplit(".", 2)[0]
            for key in ("weight", "bias"):
                shapes[f"{base}.{m[3].split('.{')[0]}.{key}"] = dims(m[4])
    return shapes


def convert_and_export_through_the_cli(fixture: Path, preset: str, tmp_path: Path):
    """`dlp convert-official` the fixture's official state dict (its hyper-parameters as `--set` flags over `preset`),
    `dlp export-official` it back, and check the export is bit-identical (keys, order, dtypes, values). Returns the
    fixture, the converted checkpoint's model and the config of the official hyper-parameters."""
    import json

    from dlp import load_checkpoint
    from dlp.cli import main
    from dlp.compat.ddlp import config_from_official_hparams

    fx = torch.load(fixture, weights_only=True)
    src = tmp_path / "official.pth"
    torch.save(fx["state_dict"], src)
    config = config_from_official_hparams(fx["hparams"])
    sets = []
    for key, value in config.to_dict().items():
        if value is not None:
            sets += ["--set", f"{key}={json.dumps(value)}"]
    assert main(["convert-official", str(src), "--preset", preset, *sets, "-o", str(tmp_path / "ours.pt")]) == 0
    model = load_checkpoint(tmp_path / "ours.pt")
    assert main(["export-official", str(tmp_path / "ours.pt"), "-o", str(tmp_path / "back.pth")]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert list(back) == list(fx["state_dict"])
    for key, tensor in fx["state_dict"].items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key
    return fx, model, config

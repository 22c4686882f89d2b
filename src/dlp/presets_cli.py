"""`dlp presets`: the presets as a table."""

from __future__ import annotations

from dlp.presets import get_preset, list_presets

COLUMNS = (
    ("preset", lambda p, m, t: p.name),
    ("model", lambda p, m, t: "object" if m.use_object_dec else "masked"),
    ("image", lambda p, m, t: m.image_size),
    ("n_kp_enc", lambda p, m, t: m.n_kp_enc),
    ("n_kp_prior", lambda p, m, t: m.n_kp_prior),
    ("patch", lambda p, m, t: m.patch_size),
    ("feat_dim", lambda p, m, t: m.learned_feature_dim),
    ("anchor_s", lambda p, m, t: m.anchor_s),
    ("glimpse", lambda p, m, t: m.glimpse_size),
    ("excl.", lambda p, m, t: m.exclusive_patches),
    ("rec", lambda p, m, t: t.rec_loss_function),
    ("beta_kl", lambda p, m, t: t.beta_kl),
    ("lr", lambda p, m, t: t.lr),
    ("batch", lambda p, m, t: t.batch_size),
    ("warmup", lambda p, m, t: t.warmup_epoch),
    ("dataset", lambda p, m, t: t.dataset),
)


def presets_table() -> str:
    rows = []
    for name in list_presets():
        preset = get_preset(name)
        model, train = preset.model_config(), preset.train_config()
        rows.append([str(fn(preset, model, train)) for _, fn in COLUMNS])
    header = [title for title, _ in COLUMNS]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r).rstrip() for r in rows]
    return "\n".join(lines)


def configure_parser(subparsers) -> None:
    p = subparsers.add_parser("presets", help="list the named presets and their hyper-parameters")
    p.set_defaults(func=lambda args: print(presets_table()))

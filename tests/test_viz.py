"""dlp.viz: particle/box drawing, boxes from masks, NMS, grids, image saving, loss curves, the training figure."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from dlp import viz
from dlp.models.dlp_v1.figures import glimpse_figure, training_figure


def test_import_does_not_load_matplotlib():
    code = "import sys, dlp, dlp.viz, dlp.perceptual, dlp.data.shapes; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"]


def test_particle_colors_palette():
    c = viz.particle_colors(13)
    assert c.shape == (13, 3) and c.dtype == torch.float32
    torch.testing.assert_close(c[0] * 255, torch.tensor([255.0, 53.0, 94.0]))  # FF355E
    torch.testing.assert_close(c[10] * 255, torch.tensor([175.0, 110.0, 77.0]))  # AF6E4D
    assert torch.equal(c[11], c[0]) and torch.equal(c[12], c[1])


def test_draw_particles_discs():
    images = torch.zeros(2, 3, 9, 9)
    kp = torch.tensor([[[0.0, 0.0], [-1.0, 1.0]], [[1.0, -1.0], [float("nan"), 0.0]]])  # centre, top-right; ...
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = viz.draw_particles(images, kp, radius=1, colors=colors)
    assert out.shape == (2, 3, 9, 9) and images.abs().sum() == 0  # input untouched
    red = out[0, 0] == 1
    assert red[4, 4] and red[3, 4] and red[5, 4] and red[4, 3] and red[4, 5] and not red[3, 3]  # a radius-1 disc
    assert int(red.sum()) == 5
    assert out[0, 1, 0, 8] == 1 and out[0, 1, 1, 8] == 1 and out[0, 1, 0, 7] == 1  # clipped disc at (row 0, col 8)
    assert out[1, 0, 8, 0] == 1 and int((out[1].sum(0) > 0).sum()) == 3  # NaN particle skipped
    # later particles are drawn on top; default radius and palette; 1-channel input; unclamped input gets clamped
    over = viz.draw_particles(torch.full((1, 1, 9, 9), 2.0), torch.zeros(1, 2, 2))
    assert over.shape == (1, 3, 9, 9) and over.max() <= 1
    torch.testing.assert_close(over[0, :, 4, 4], viz.particle_colors(2)[1])


def test_boxes_from_masks_tight():
    masks = torch.zeros(3, 1, 8, 8)
    masks[0, 0, 2:5, 1:7] = 1
    masks[1, 0, 3, 6] = 1
    masks[1, 0, 6, 2] = 1  # not a rectangle: tight box must still cover both pixels
    boxes = viz.boxes_from_masks(masks, 8, 8)
    assert boxes.dtype == torch.int64
    assert boxes.tolist() == [[1, 2, 7, 5], [2, 3, 7, 7], [0, 0, 0, 0]]
    # mask grid scaled to a larger image
    assert viz.boxes_from_masks(masks[:1], 16, 32).tolist() == [[2, 8, 14, 20]]


def test_anchor_boxes():
    kp = torch.tensor([[0.0, 0.0], [-1.0, -1.0]])  # centre pixel 32 of a 65-pixel image; top-left corner
    boxes = viz.anchor_boxes(kp, 0.25, 65)  # side round(0.25 * 64) = 16
    assert boxes.tolist() == [[25, 25, 41, 41], [0, 0, 9, 9]]
    even = viz.anchor_boxes(torch.zeros(1, 2), 0.1, 65)  # side round(6.4) = 6: pixels 30..35 around 32
    assert even.tolist() == [[30, 30, 36, 36]]
    assert viz.anchor_boxes(torch.zeros(1, 2), 5 / 64, 65).tolist() == [[30, 30, 35, 35]]  # odd side 5: 30..34


def _reference_nms(boxes, scores, thresh):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        if all(viz.box_iou(boxes[i : i + 1], boxes[j : j + 1]).item() <= thresh for j in keep):
            keep.append(i)
    return keep


def test_box_iou_and_nms():
    a = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]])
    iou = viz.box_iou(a, a)
    torch.testing.assert_close(iou[0, 1], torch.tensor(50 / 150))
    assert iou[0, 2] == 0 and iou[3, 3] == 0 and iou[0, 0] == 1
    scores = torch.tensor([0.9, 0.95, 0.5, 0.1])
    assert viz.nms(a, scores, 0.3).tolist() == [1, 2, 3]
    assert viz.nms(a, scores, 0.5).tolist() == [1, 0, 2, 3]
    assert viz.nms(a[:0], scores[:0], 0.5).numel() == 0
    g = torch.Generator().manual_seed(0)
    xy = torch.randint(0, 40, (30, 2), generator=g)
    wh = torch.randint(4, 20, (30, 2), generator=g)
    boxes = torch.cat([xy, xy + wh], 1)
    s = torch.rand(30, generator=g)
    for t in (0.1, 0.3, 0.7):
        assert viz.nms(boxes, s, t).tolist() == _reference_nms(boxes, s, t)


def test_draw_boxes_outline_and_scores():
    images = torch.zeros(2, 3, 20, 20)
    boxes = [torch.tensor([[2, 3, 12, 15]]), torch.zeros(0, 4, dtype=torch.long)]
    out = viz.draw_boxes(images, boxes, colors=[torch.tensor([[0.0, 0.0, 1.0]]), torch.zeros(0, 3)])
    blue = out[0, 2] == 1
    assert blue[3, 2] and blue[14, 11] and blue[3, 11] and blue[14, 2]  # corners, exclusive x1/y1
    assert not blue[8, 6] and not blue[15, 12] and not blue[2, 2]  # inside and outside stay empty
    assert int(blue.sum()) == 2 * 10 + 2 * 10  # perimeter of a 10 x 12 box
    assert out[1].abs().sum() == 0
    labelled = viz.draw_boxes(images[:1], torch.tensor([[[2, 3, 18, 18]]]), scores=[torch.tensor([0.5])])
    assert (labelled[0].sum(0) > 0).sum() > int(blue.sum())  # "0.50" written inside the box


def test_make_grid_and_save_image(tmp_path):
    rows = [torch.zeros(3, 3, 4, 5), torch.full((2, 1, 4, 5), 0.5)]
    grid = viz.make_grid(rows, pad_value=1)
    assert grid.shape == (3, 2 + 2 * (4 + 2), 2 + 3 * (5 + 2))
    assert grid[:, 2:6, 2:7].abs().sum() == 0 and (grid[:, 8:12, 2:7] == 0.5).all()
    assert (grid[:, 8:12, 16:21] == 1).all()  # missing third image of the short row is padding
    with pytest.raises(ValueError):
        viz.make_grid([torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 5, 5)])
    from PIL import Image

    for name in ("grid.png", "sub/grid.jpg"):
        path = viz.save_image(grid, tmp_path / name)
        with Image.open(path) as im:
            assert im.size == (grid.shape[2], grid.shape[1]) and im.mode == "RGB"
    with Image.open(viz.save_image(grid, tmp_path / "g.png")) as im:
        assert im.getpixel((0, 0)) == (255, 255, 255) and im.getpixel((10, 10)) == (128, 128, 128)
    with Image.open(viz.save_image(torch.rand(2, 3, 4, 4), tmp_path / "batch.png")) as im:
        assert im.size == (2 + 2 * 6, 8)


def test_plot_loss_curves(tmp_path):
    metrics = [
        {"epoch": e, "loss": 10.0 - e, "rec": 5.0 - e, "kl": 2.0, "kl_kp": 1.5, "kl_feat": torch.tensor(0.5)}
        | {"lr": 1e-3}
        | ({"val_loss": 3.0 - e / 10, "psnr": 20.0 + e} if e % 2 else {})
        for e in range(6)
    ]
    path = viz.plot_loss_curves(metrics, tmp_path / "curves" / "graph.png", title="run")
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] == 800 and im.size[1] == 100 * 2.4 * 5  # loss, KL, rec, val, psnr
    assert viz.plot_loss_curves([{"loss": 1.0}], tmp_path / "one.png").exists()


def _fake_output(b=3, k=4, p=6, h=32, obj=True):
    g = torch.Generator().manual_seed(0)
    mu = torch.rand(b, k + 1, 2, generator=g) * 2.4 - 1.2  # some outside [-1, 1]: clamped for plotting
    mu[:, -1] = 0
    logvar = -torch.rand(b, k + 1, 2, generator=g) * 5
    return SimpleNamespace(
        mu=mu,
        logvar=logvar,
        kp_prior=torch.rand(b, p, 2, generator=g) * 2 - 1,
        rec=torch.rand(b, 3, h, h, generator=g) * 1.4 - 0.2,
        obj_on=torch.rand(b, k, generator=g) if obj else None,
        dec_objects=torch.rand(b, 3, h, h, generator=g) if obj else None,
        dec_glimpses=torch.rand(b, k, 4, 8, 8, generator=g) if obj else None,
        glimpses=torch.rand(b * k, 3, 6, 6, generator=g) if obj else None,
    )


def _tile(grid, row, col, h, ncol=2):
    """Tile (row, col) of a labelled grid: the labels take the columns left of the tiles."""
    labels = grid.shape[-1] - (2 + ncol * (h + 2))
    top, left = 2 + row * (h + 2), labels + 2 + col * (h + 2)
    return grid[:, top : top + h, left : left + h]


def test_training_figure_object_model():
    out = _fake_output()
    x = torch.rand(3, 3, 32, 32)
    grid = training_figure(x, out, topk=2, iou_thresh=0.2, anchor_s=0.25, max_imgs=2)
    assert grid.shape[:2] == (3, 2 + 7 * 34) and grid.shape[2] > 2 + 2 * 34  # 7 rows, 2 columns and the labels
    assert grid[:, 2:34, :20].min() < 0.5  # a label in black on the left of the first row
    torch.testing.assert_close(_tile(grid, 0, 1, 32), x[1])
    torch.testing.assert_close(_tile(grid, 2, 0, 32), out.rec[0].clamp(0, 1))
    torch.testing.assert_close(_tile(grid, 5, 0, 32), out.dec_objects[0])
    colors = viz.particle_colors(4)
    fg = viz.draw_particles(x[:2], out.mu[:2, :-1].clamp(-1, 1), colors=colors)
    torch.testing.assert_close(_tile(grid, 1, 0, 32), fg[0])
    conf = -out.logvar[:2, :-1].sum(-1)
    top = conf.topk(2, dim=1).indices
    top_kp = torch.gather(out.mu[:2, :-1].clamp(-1, 1), 1, top[..., None].expand(-1, -1, 2))
    top_img = viz.draw_particles(x[:2], top_kp, colors=colors[top])
    torch.testing.assert_close(_tile(grid, 4, 1, 32), top_img[1])
    # boxes: obj_on scores >= the mean over the whole batch (3 images), NMS, coloured by particle index
    scores = out.obj_on
    boxes = viz.anchor_boxes(out.mu[:2, :-1].clamp(-1, 1), 0.25, 32)
    i = 0
    idx = torch.nonzero(scores[i] >= scores.mean()).flatten()
    idx = idx[viz.nms(boxes[i, idx], scores[i, idx], 0.2)]
    expected = viz.draw_boxes(x[:1], [boxes[i, idx]], [colors[idx]], [scores[i, idx]])
    torch.testing.assert_close(_tile(grid, 6, 0, 32), expected[0])
    glimpses = glimpse_figure(out, n=5)
    assert glimpses.shape[:2] == (3, 2 + 2 * 10) and glimpses.shape[2] > 2 + 5 * 10


def test_training_figure_masked_model_and_x_prior():
    out = _fake_output(obj=False)
    x, x_prior = torch.rand(2, 3, 32, 32), torch.zeros(2, 3, 32, 32)
    grid = training_figure(x, out, x_prior=x_prior, topk=10)
    assert grid.shape[1] == 2 + 5 * 34  # no object rows; topk capped at K
    prior_tile = _tile(grid, 3, 0, 32)
    assert (prior_tile.sum(0) > 0).any() and (prior_tile.sum(0) == 0).any()  # proposals on the black x_prior
    assert glimpse_figure(out) is None
    with pytest.raises(ValueError):
        training_figure(x, _fake_output(b=2), box_scores="area")

"""Captioned Shapes renderer: determinism, overrides, geometry bounds, captions (docs/captioned_shapes.md)."""
import numpy as np
import pytest

from vdm_jax.data import shapes

SEEDS = range(120)


def _attributes(clip):
  return {key: clip[key] for key in ("color", "shape", "motion")}


def test_clip_format():
  clip = shapes.render_clip(0)
  assert clip["video"].shape == (17, 64, 64, 3) and clip["video"].dtype == np.uint8
  assert isinstance(clip["caption"], str)
  assert clip["color"] in shapes.COLORS and clip["shape"] in shapes.SHAPES and clip["motion"] in shapes.MOTIONS
  assert shapes.render_clip(0, num_frames=9, height=32, width=48)["video"].shape == (9, 32, 48, 3)


def test_palette_matches_spec_order():
  assert list(shapes.COLORS) == ["red", "green", "blue", "yellow", "orange", "purple", "cyan", "white"]
  assert shapes.COLORS["orange"] == (245, 130, 48)


def test_same_seed_same_clip():
  a, b, c = shapes.render_clip(7), shapes.render_clip(7), shapes.render_clip(8)
  np.testing.assert_array_equal(a["video"], b["video"])
  assert a["caption"] == b["caption"]
  assert not np.array_equal(a["video"], c["video"])


def test_overrides_fix_one_attribute_and_keep_the_other_draws():
  for seed in range(20):
    base = shapes.render_clip(seed)
    for key, value in (("color", "red"), ("shape", "triangle"), ("motion", "up")):
      clip = shapes.render_clip(seed, **{key: value})
      assert clip[key] == value
      for other in {"color", "shape", "radius"} - {key}:
        assert clip[other] == base[other]
      if key != "motion":
        np.testing.assert_array_equal(clip["centers"], base["centers"])
        assert clip["motion"] == base["motion"]
  clip = shapes.render_clip(3, color="white", shape="square", motion="still", radius=10.0, template=0)
  assert clip["caption"] == "a white square standing still" and clip["radius"] == 10.0


@pytest.mark.parametrize("overrides, words", [
    (dict(size=3), ["size", "color", "template"]),
    (dict(color="pink"), ["color", "pink", "red", "white"]),
    (dict(shape="hexagon"), ["shape", "circle", "triangle"]),
    (dict(motion="diagonal"), ["motion", "left", "still"]),
    (dict(template=99), ["template"]),
    (dict(radius=40.0), ["radius"]),
])
def test_bad_overrides_name_the_key_and_allowed_values(overrides, words):
  with pytest.raises(ValueError) as error:
    shapes.render_clip(0, **overrides)
  for word in words:
    assert word in str(error.value)


@pytest.mark.parametrize("size, num_frames", [(64, 17), (32, 9)])
def test_object_fully_inside_every_frame(size, num_frames):
  cases = [dict()] * 100 + [dict(radius=size / 5, motion=m, shape=s) for m in shapes.MOTIONS for s in shapes.SHAPES]
  for seed, overrides in enumerate(cases):
    video = shapes.render_clip(seed, num_frames, size, size, **overrides)["video"]
    lit = video.max(axis=-1) > 0  # [T, H, W]
    assert lit.any(axis=(1, 2)).all(), "object missing in a frame"
    # The border ring stays black: the object never touches (let alone crosses) the canvas edge.
    assert not lit[:, 0].any() and not lit[:, -1].any() and not lit[:, :, 0].any() and not lit[:, :, -1].any()


def test_radius_bounds():
  radii = np.array([shapes.render_clip(seed)["radius"] for seed in SEEDS])
  assert radii.min() >= 64 / 8 and radii.max() <= 64 / 5
  assert radii.max() - radii.min() > 0.8 * (64 / 5 - 64 / 8)  # actually spread over the range


def test_motion_direction_and_speed():
  axis_sign = {"left": (1, -1), "right": (1, 1), "up": (0, -1), "down": (0, 1)}
  for seed in SEEDS:
    clip = shapes.render_clip(seed)
    delta = clip["centers"][-1] - clip["centers"][0]  # (d_row, d_col)
    if clip["motion"] == "still":
      np.testing.assert_array_equal(clip["centers"], clip["centers"][:1].repeat(17, axis=0))
      continue
    axis, sign = axis_sign[clip["motion"]]
    assert delta[1 - axis] == 0 and np.sign(delta[axis]) == sign
    free_span = 64 - 2 * (clip["radius"] + shapes.MARGIN)
    assert 0.35 - 1e-9 <= abs(delta[axis]) / free_span <= 0.60 + 1e-9
    steps = np.diff(clip["centers"][:, axis])
    np.testing.assert_allclose(steps, steps[0])  # constant velocity
    # The rendered pixels move with the centre (intensity-weighted centroid, anti-aliasing makes it sub-pixel).
    weight = clip["video"].max(axis=-1).astype(np.float64)
    coord = np.arange(64.0) + 0.5
    centroid = [(weight[f].sum(1 - axis) * coord).sum() / weight[f].sum() for f in (0, -1)]
    np.testing.assert_allclose(centroid[1] - centroid[0], delta[axis], atol=0.3)


def test_caption_names_the_three_attributes():
  for seed in SEEDS:
    clip = shapes.render_clip(seed)
    assert shapes.parse_caption(clip["caption"]) == _attributes(clip)
  for template in range(len(shapes.TEMPLATES)):
    for motion in shapes.MOTIONS:
      caption = shapes.caption_for("green", "circle", motion, template)
      assert shapes.parse_caption(caption) == dict(color="green", shape="circle", motion=motion), caption


def test_templates_vary():
  captions = {shapes.render_clip(0, template=t, motion="left")["caption"] for t in range(len(shapes.TEMPLATES))}
  assert len(captions) == len(shapes.TEMPLATES)
  assert len({shapes.render_clip(seed)["caption"].split()[0] for seed in SEEDS}) > 2


def test_parse_caption():
  assert shapes.parse_caption("A Red CIRCLE moving left.") == dict(color="red", shape="circle", motion="left")
  assert shapes.parse_caption("a cyan triangle") == dict(color="cyan", shape="triangle", motion=None)
  assert shapes.parse_caption("reddish squares upward") == dict(color=None, shape=None, motion=None)


def test_heldout_helpers():
  heldout = shapes.validate_heldout([["red", "circle"], ("blue", "left")])
  assert heldout == (("red", "circle"), ("blue", "left"))
  assert shapes.is_heldout(dict(color="red", shape="circle", motion="up"), heldout)
  assert shapes.is_heldout(dict(color="blue", shape="square", motion="left"), heldout)
  assert not shapes.is_heldout(dict(color="red", shape="square", motion="left"), heldout)
  rng = np.random.default_rng(0)
  draws = [shapes.sample_attributes(rng, heldout) for _ in range(300)]
  assert not any(shapes.is_heldout(d, heldout) for d in draws)
  draws = [shapes.sample_attributes(rng, heldout, only_heldout=True) for _ in range(100)]
  assert all(shapes.is_heldout(d, heldout) for d in draws)
  for bad in ([("red", "blue")], [("red", "hexagon")], [("red",)]):
    with pytest.raises(ValueError, match="held-out pair"):
      shapes.validate_heldout(bad)


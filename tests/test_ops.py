"""Preprocessing ops: every op, the spec parser (good and bad specs), determinism, composition, grain."""
import copy
import pickle

import grain
import numpy as np
import pytest

from vdm_jax.data import ops
from vdm_jax.io import video as video_io

SPEC = ("decode_video|temporal_sample(num_frames=17, stride=1)|resize(64)|center_crop(64)|value_range(-1, 1)"
        "|decode_text('caption')|keep('video', 'caption')")


def make_video(frames=20, height=36, width=48, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def make_example(**kwargs):
  return {"video": make_video(**kwargs), "caption": b"a red square moves left", "id": 7}


def rng(seed=0):
  return np.random.default_rng(seed)


def run(spec, example, seed=0):
  """Runs `spec` and checks that the input example was not changed."""
  before = copy.deepcopy(example)
  out = ops.build(spec)(example, rng(seed))
  assert example.keys() == before.keys()
  for k in before:
    assert np.array_equal(example[k], before[k]) if isinstance(before[k], np.ndarray) else example[k] == before[k]
  return out


# ----------------------------------------------------------------------------------------------------- registry


def test_registry_lists_every_op():
  expected = {"decode_video", "decode_text", "temporal_sample", "resize", "center_crop", "random_crop",
              "value_range", "to_image", "keep", "rename"}
  assert expected <= set(ops.names())
  assert ops.get("resize") is ops.get_resize
  with pytest.raises(ValueError, match=r"unknown preprocessing op 'flip_lr'.*center_crop"):
    ops.get("flip_lr")
  with pytest.raises(ValueError, match="already registered"):
    ops.register("resize")(lambda: None)


# ------------------------------------------------------------------------------------------------------- parser


def test_parse_full_spec():
  parsed = ops.parse(SPEC)
  assert len(parsed) == 7 and all(callable(op) for op in parsed)
  assert ops.parse("") == [] and ops.parse("   ") == []
  assert len(ops.parse("keep('a|b')")) == 1  # a '|' inside a string is not a separator
  assert len(ops.parse("resize((16, 24), method='area') | keep('video')")) == 2


@pytest.mark.parametrize("spec,words", [
    ("resize(64|center_crop(64)", ["resize(64"]),
    ("resize(64)||keep('video')", ["''"]),
    ("resize(64)|", ["''"]),
    ("resize(size)", ["'size'", "not a literal"]),
    ("resize(1 + 2)", ["'1 + 2'", "not a literal"]),
    ("__import__('os').system('true')", ["not an op"]),
    ("resize(*[64])", ["*args"]),
    ("resize(**{'size': 64})", ["**kwargs"]),
    ("flip_lr", ["unknown preprocessing op 'flip_lr'", "resize"]),
    ("resize(64, 'bilinear', 'video', 4)", ["resize(64, 'bilinear', 'video', 4)", "signature"]),
    ("resize(64, method='cubic')", ["method", "bicubic"]),
    ("temporal_sample(num_frames=0)", ["num_frames", "positive"]),
    ("center_crop((1, 2, 3))", ["center_crop", "(height, width)"]),
    ("keep()", ["keep"]),
])
def test_parse_bad_specs(spec, words):
  with pytest.raises(ValueError) as info:
    ops.parse(spec)
  assert all(w in str(info.value) for w in words), str(info.value)


def test_parse_rejects_non_strings():
  with pytest.raises(TypeError, match="string"):
    ops.parse(["resize(64)"])


# ---------------------------------------------------------------------------------------------------------- ops


def test_decode_video_array_and_bytes(tmp_path):
  video = make_video(frames=4, height=16, width=16)
  assert np.array_equal(run("decode_video", {"video": video})["video"], video)
  gray = run("decode_video", {"video": video[..., 0]})["video"]
  assert gray.shape == (4, 16, 16, 3)
  for name in ("c.npy", "c.mp4"):
    data = video_io.write_video(tmp_path / name, video).read_bytes()
    assert run("decode_video", {"video": data})["video"].shape == (4, 16, 16, 3)
    assert run("decode_video", {"video": np.array(data, dtype=object)})["video"].shape == (4, 16, 16, 3)
  with pytest.raises(ValueError, match="float32"):
    run("decode_video", {"video": video.astype(np.float32)})
  with pytest.raises(video_io.VideoReadError, match=r"example\['video'\]"):
    run("decode_video", {"video": b"corrupt bytes" * 10})
  with pytest.raises(KeyError, match="frames"):
    run("decode_video('frames')", {"video": video})


def test_decode_video_errors_name_the_example(tmp_path):
  """They used to name the temporary file the bytes were written to, deleted by the time anyone reads the error."""
  data = video_io.write_video(tmp_path / "c.mp4", make_video(frames=8, height=16, width=16)).read_bytes()
  truncated = data[:len(data) // 2]
  with pytest.raises(video_io.VideoReadError, match=r"example\['video'\] of the example with filename='clips/7.mp4'"):
    run("decode_video", {"video": truncated, "filename": np.array(b"clips/7.mp4", dtype=object)})
  with pytest.raises(video_io.VideoReadError, match="seed=12"):
    run("decode_video", {"video": truncated, "seed": 12})
  with pytest.raises(ValueError, match="on_damage"):
    ops.build("decode_video(on_damage='skip')")


def test_decode_text():
  assert run("decode_text", {"caption": "héllo".encode()})["caption"] == "héllo"
  assert run("decode_text", {"caption": "already text"})["caption"] == "already text"
  assert run("decode_text('t')", {"t": np.array(b"np bytes")})["t"] == "np bytes"
  with pytest.raises(TypeError, match="int"):
    run("decode_text", {"caption": 3})


def test_temporal_sample():
  video = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
  first = run("temporal_sample(4, stride=2, random=False)", {"video": video})["video"]
  assert first.shape == (4, 2, 2, 3) and list(first[:, 0, 0, 0]) == [0, 2, 4, 6]
  starts = {int(run("temporal_sample(4, stride=2)", {"video": video}, seed=s)["video"][0, 0, 0, 0])
            for s in range(30)}
  assert starts == {0, 1, 2, 3}  # every start that fits, from rng
  for s in range(30):
    frames = run("temporal_sample(4, stride=2)", {"video": video}, seed=s)["video"][:, 0, 0, 0]
    assert list(np.diff(frames)) == [2, 2, 2]
  padded = run("temporal_sample(4, stride=4, pad=True)", {"video": video})["video"]
  assert list(padded[:, 0, 0, 0]) == [0, 4, 8, 9]  # the last frame repeats
  with pytest.raises(ValueError, match=r"has 10 frames, needs at least 13"):
    run("temporal_sample(4, stride=4)", {"video": video})


def test_resize():
  example = {"video": make_video(frames=2, height=36, width=48)}
  assert run("resize(24)", example)["video"].shape == (2, 24, 32, 3)  # shorter side, aspect kept
  tall = {"video": make_video(frames=2, height=48, width=36)}
  assert run("resize(24)", tall)["video"].shape == (2, 32, 24, 3)
  for method in ("bilinear", "area", "bicubic", "nearest"):
    out = run(f"resize((10, 20), method='{method}')", example)["video"]
    assert out.shape == (2, 10, 20, 3) and out.dtype == np.uint8
  flat = {"video": np.full((1, 8, 8, 3), 77, np.uint8)}
  assert np.all(run("resize(4)", flat)["video"] == 77)
  assert run("resize(5)", {"video": np.zeros((1, 8, 8, 1), np.uint8)})["video"].shape == (1, 5, 5, 1)
  with pytest.raises(ValueError, match="before value_range"):
    run("value_range|resize(8)", example)


def test_center_crop():
  video = make_video(frames=2, height=10, width=12)
  out = run("center_crop(4)", {"video": video})["video"]
  assert np.array_equal(out, video[:, 3:7, 4:8])
  assert run("center_crop((2, 6))", {"video": video})["video"].shape == (2, 2, 6, 3)
  with pytest.raises(ValueError, match=r"crop 11x4 is larger than .* 10x12"):
    run("center_crop((11, 4))", {"video": video})


def test_random_crop():
  video = make_video(frames=2, height=10, width=12)
  crops = [run("random_crop(4)", {"video": video}, seed=s)["video"] for s in range(20)]
  assert all(c.shape == (2, 4, 4, 3) for c in crops)
  corners = set()
  for c in crops:  # each crop is a window of the video, the same for every frame
    hits = [(i, j) for i in range(7) for j in range(9) if np.array_equal(video[:, i:i + 4, j:j + 4], c)]
    assert hits
    corners.add(hits[0])
  assert len(corners) > 1
  with pytest.raises(ValueError, match="larger"):
    run("random_crop(13)", {"video": video})
  with pytest.raises(ValueError, match="Generator"):
    ops.build("random_crop(4)")({"video": video})


def test_value_range():
  video = np.array([0, 51, 255], np.uint8).reshape(1, 1, 3, 1)
  out = run("value_range(-1, 1)", {"video": video})["video"]
  assert out.dtype == np.float32
  np.testing.assert_allclose(out.ravel(), [-1, -0.6, 1], atol=1e-6)
  np.testing.assert_allclose(run("value_range(0, 1)", {"video": video})["video"].ravel(), [0, 0.2, 1], atol=1e-6)
  with pytest.raises(ValueError, match="uint8"):
    run("value_range|value_range", {"video": video})


def test_to_image():
  video = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((1, 3, 4, 3), np.uint8)
  assert np.array_equal(run("to_image(random=False)", {"video": video})["video"], video[:1])
  picked = {int(run("to_image", {"video": video}, seed=s)["video"][0, 0, 0, 0]) for s in range(40)}
  assert picked == set(range(6))
  assert run("to_image", {"video": video})["video"].shape == (1, 3, 4, 3)


def test_keep_and_rename():
  example = {"frames": 1, "text": "t", "id": 3}
  assert run("keep('frames', 'id')", example) == {"frames": 1, "id": 3}
  assert run("rename(video='frames', caption='text')", example) == {"video": 1, "caption": "t", "id": 3}
  assert run("rename(frames='text', text='frames')", example) == {"frames": "t", "text": 1, "id": 3}
  with pytest.raises(KeyError, match="nope"):
    run("keep('frames', 'nope')", example)
  with pytest.raises(KeyError, match="nope"):
    run("rename(video='nope')", example)


# ------------------------------------------------------------------------------------ determinism and composition


@pytest.mark.parametrize("spec", ["temporal_sample(5)", "random_crop(16)", "to_image",
                                  "temporal_sample(5)|random_crop((8, 12))|to_image"])
def test_random_ops_are_deterministic_given_the_seed(spec):
  example = make_example()
  a, b = run(spec, example, seed=3), run(spec, example, seed=3)
  assert np.array_equal(a["video"], b["video"])
  others = [run(spec, example, seed=s)["video"] for s in range(4, 12)]
  assert any(not np.array_equal(a["video"], o) for o in others)


def test_build_composes_the_full_spec():
  out = run(SPEC, make_example(frames=20, height=36, width=48))
  assert set(out) == {"video", "caption"}
  assert out["video"].shape == (17, 64, 64, 3) and out["video"].dtype == np.float32
  assert out["video"].min() >= -1 and out["video"].max() <= 1
  assert out["caption"] == "a red square moves left"
  assert ops.build("")(out, None) is out


def test_pipeline_pickles_as_its_spec():
  pipeline = ops.build(SPEC)
  clone = pickle.loads(pickle.dumps(pipeline))
  example = make_example()
  assert np.array_equal(pipeline(example, rng(5))["video"], clone(example, rng(5))["video"])
  assert repr(clone) == f"Pipeline({SPEC!r})"


def test_build_runs_in_a_grain_pipeline():
  records = [make_example(frames=20 + i, seed=i) for i in range(4)]
  spec = "decode_video|temporal_sample(8)|resize(16)|random_crop(16)|value_range|decode_text|keep('video', 'caption')"

  def dataset(seed):
    return grain.MapDataset.source(records).seed(seed).random_map(ops.build(spec)).batch(2)

  batches = list(dataset(0))
  assert len(batches) == 2
  assert batches[0]["video"].shape == (2, 8, 16, 16, 3) and batches[0]["video"].dtype == np.float32
  assert list(batches[1]["caption"]) == ["a red square moves left"] * 2
  again = list(dataset(0))
  assert all(np.array_equal(a["video"], b["video"]) for a, b in zip(batches, again))
  other = list(dataset(1))
  assert not all(np.array_equal(a["video"], b["video"]) for a, b in zip(batches, other))


def test_tokenize_byte_ids():
  from vdm_jax.data import ops as ops_lib  # pylint: disable=g-import-not-at-top
  op = ops_lib.build("tokenize(8)")
  out = op({"caption": b"a red"}, None)
  np.testing.assert_array_equal(out["tokens"], [97 + 3, 32 + 3, 114 + 3, 101 + 3, 100 + 3, 1, 0, 0])
  assert out["tokens"].dtype == np.int32 and out["caption"] == b"a red"
  long = op({"caption": "x" * 20}, None)["tokens"]
  assert len(long) == 8 and long[-1] == 1  # truncated, EOS kept

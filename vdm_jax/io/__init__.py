"""Video and image reading and writing (mp4, gif, npy; PNG and JPEG prompts), and pictures of videos (contact sheets,
PNG, notebook HTML)."""
from vdm_jax.io.image import read_image
from vdm_jax.io.video import VideoDamageWarning
from vdm_jax.io.video import VideoReadError
from vdm_jax.io.video import as_video
from vdm_jax.io.video import encode_video
from vdm_jax.io.video import iter_video
from vdm_jax.io.video import read_video
from vdm_jax.io.video import read_video_bytes
from vdm_jax.io.video import to_uint8
from vdm_jax.io.video import write_gif
from vdm_jax.io.video import write_mp4
from vdm_jax.io.video import write_npy
from vdm_jax.io.video import write_video
from vdm_jax.io.visualize import contact_sheet
from vdm_jax.io.visualize import video_html
from vdm_jax.io.visualize import write_image

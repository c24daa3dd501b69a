"""Video reading and writing (mp4, gif, npy)."""
from vdm_jax.io.video import VideoReadError
from vdm_jax.io.video import as_video
from vdm_jax.io.video import contact_sheet
from vdm_jax.io.video import encode_video
from vdm_jax.io.video import read_video
from vdm_jax.io.video import read_video_bytes
from vdm_jax.io.video import to_uint8
from vdm_jax.io.video import video_html
from vdm_jax.io.video import write_gif
from vdm_jax.io.video import write_image
from vdm_jax.io.video import write_mp4
from vdm_jax.io.video import write_npy
from vdm_jax.io.video import write_video

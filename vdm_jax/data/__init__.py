"""Video data: Captioned Shapes, tfds builders, grain input pipelines and preprocessing ops."""

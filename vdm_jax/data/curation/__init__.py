"""Curation of real footage (issue [K]): per-clip scores that decide which clips a video-folder dataset keeps."""

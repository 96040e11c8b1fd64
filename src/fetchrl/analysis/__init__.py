"""Analysis: TensorBoard reading, diagnosis, plots, video, HTML report, statistics."""

"""The competition's files and masks: RLE, labels, images, folds, synthetic data, submissions,
the metric, the image cache and the post-processing maths. Imports only the base modules."""

"""Inference: ensembles and TTA, gates, OOF statistics, the search, the CV report, predict
and pseudo-labels. Never imports competition.train."""

"""Training: the loop, losses, schedules, datasets and augmentation, tracking, runs and
averaging. Never imports competition.infer."""

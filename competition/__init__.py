"""Severstal: Steel Defect Detection, from train.csv to a scored CV and a submission."""

__version__ = "0.1.0"

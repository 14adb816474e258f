"""The front door: `python -m competition <stage>`."""

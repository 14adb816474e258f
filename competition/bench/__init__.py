"""`python -m competition bench ...`: timings measured side by side in one run."""

"""The Kaggle side: the code and weights bundle, and the offline kernel script."""

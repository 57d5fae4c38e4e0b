"""Candidate search over a supernet's subnets, and the supernet -> search -> retrain pipeline."""

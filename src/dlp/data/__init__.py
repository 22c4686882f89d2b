"""Datasets for DLP training and evaluation (synthetic shapes, image folders, videos)."""

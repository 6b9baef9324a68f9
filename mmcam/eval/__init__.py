"""Evaluation: do maps point at the right object, and do they reflect what the model uses?"""

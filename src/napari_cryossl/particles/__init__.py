"""Particles: the annotation store the dock saves clicks and labels in, particle sets
and the boxes cut around them, and picking (Difference of Gaussians, template matching)
with the challenge's metric to score it.
"""

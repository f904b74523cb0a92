"""Stage one: I3D backbone (`extract.i3d`), its weights (`extract.weights`) and feature extraction.

Kept import-light on purpose: importing `extract` pulls in nothing heavy; import the submodules.
"""

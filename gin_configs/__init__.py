"""Gin configs shipped with the package (models, mixtures, topologies, runs); see README.md."""

"""Mechanisms of this family are being written (issue 3); the registry collects MECHANISMS."""

MECHANISMS: list = []

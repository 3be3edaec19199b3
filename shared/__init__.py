"""Trainforge's public contracts: message types, subject and stream names, and settings.

Other services subscribe to these subjects directly, so everything in this package is a versioned API:
evolve it by adding fields with defaults, never by changing an existing field's type (see docs/events.md).
"""

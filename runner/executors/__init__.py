"""Executors: one per run kind family. The agent picks one by the job's `spec.kind`."""

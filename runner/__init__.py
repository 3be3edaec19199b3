"""The runner agent: claims jobs of one pool from JetStream, runs them on one device, reports events."""

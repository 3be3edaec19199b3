"""The gateway's service layer: every SQL statement lives here; controllers and the projector call it."""

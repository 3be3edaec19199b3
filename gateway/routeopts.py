"""Route handler options (`opt={...}`) that `gateway.apispec` reads: a leaf module, so that any controller can
name them without importing the OpenAPI rules (which import the auth middleware)."""

ERRORS_OPT = "error_statuses"
"""Error statuses this operation answers beyond the rules of `gateway.apispec` (a set of ints)."""
MEDIA_TYPE_OPT = "success_media_type"
"""The media type of its success response when Litestar cannot tell it (files, text formats)."""

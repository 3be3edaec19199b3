"""The command line's API client: the Python client's HTTP core (`trainforge.client.transport`)."""

from trainforge.client.errors import TrainforgeError as ApiError
from trainforge.client.transport import TERMINAL_EVENTS
from trainforge.client.transport import Transport as ApiClient

__all__ = ["TERMINAL_EVENTS", "ApiClient", "ApiError"]

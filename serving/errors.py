"""Errors of the serving layer, each naming the endpoint or file involved and what to do."""


class ServingError(Exception):
    """Base class for model-serving failures."""


class ModelRefError(ServingError, ValueError):
    """A model reference (path, hub name or endpoint) is malformed or points at something unusable."""


class EndpointError(ServingError):
    """The endpoint cannot be reached, or does not speak the OpenAI chat-completions schema."""


class UnknownModelError(ServingError):
    """The endpoint answers but does not serve the model we asked for."""


class ServerDiedError(ServingError):
    """The model server process died (it is being restarted); the request that hit it did not complete."""


class SwapVerificationError(ServingError):
    """After a swap, the server could not be shown to serve the requested model; scores would be stale."""


class EngineUnavailableError(EndpointError):
    """The serving engine asked for cannot run on this machine (not installed, or no kernels for this CPU)."""


class ToolFormatError(ModelRefError):
    """A request carries tools, but the served model's chat template writes tool calls cycleqd cannot read back."""

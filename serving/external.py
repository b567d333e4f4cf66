"""An endpoint somebody else runs (a hosted API, a vLLM of yours): no lifecycle, only the client."""

from __future__ import annotations

from cycleqd.serving.client import ClientSettings, ServedModel, require_model
from cycleqd.serving.errors import ModelRefError
from cycleqd.serving.manager import ServerManager
from cycleqd.serving.model_ref import ExternalEndpoint, ModelRef


class ExternalManager(ServerManager):
    kind = "external"

    def __init__(self, endpoint: ExternalEndpoint, client_settings: ClientSettings | None = None) -> None:
        super().__init__(client_settings)
        self.endpoint = endpoint

    @property
    def base_url(self) -> str:
        return self.endpoint.base_url

    def _api_key(self) -> str | None:
        return self.endpoint.api_key()

    async def start(self) -> None:
        """Check, once, that the endpoint answers the OpenAI model list and serves our model."""
        await require_model(self.client, self.endpoint.model)

    async def _load(self, ref: ModelRef) -> ServedModel:
        if ref != self.endpoint:
            raise ModelRefError(
                f"an external endpoint cannot be made to serve {ref.label}; it serves {self.endpoint.label}"
            )
        return ServedModel(self.endpoint.model, self.endpoint.identity())

"""adamax-ps client: a Keras-compatible Adamax whose state lives on servers."""

__all__: list[str] = []

"""omni-serve: Qwen2.5-Omni behind an OpenAI-compatible HTTP API (FastAPI on uvicorn) -- chat
completions with text and streamed speech out, many users at once on one `Omni`.

    from omni_runtime.omni import Omni
    from omni_runtime.serve import BackgroundServer, ServeOptions, create_app
    app = create_app(Omni.from_checkpoint(), ServeOptions(model_name="omni", max_streams=8))
    with BackgroundServer(app) as server:          # or: uvicorn.run(app), or the omni-serve command
        ...                                        # openai.OpenAI(base_url=server.url + "/v1", ...)

Files: app.py (routes, auth, disconnects), protocol.py (requests -> `Omni.stream` arguments),
media.py (content parts, size limits, decoding), completions.py (events -> chunks / responses),
audio_out.py (PCM16 / WAV), admission.py (streams + bounded queue), metrics.py (Prometheus),
options.py, server.py (uvicorn), cli.py (`omni-serve`). Importing this package is light (no torch,
no FastAPI) so `omni-serve --help` answers at once; the names below load on first use.
"""
__all__ = ["create_app", "ServeOptions", "BackgroundServer"]

_HOMES = {"create_app": ".app", "ServeOptions": ".options", "BackgroundServer": ".server"}


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_HOMES[name], __name__), name)

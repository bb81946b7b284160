"""`dfx serve` on Ray Serve: the very FastAPI app of `dfx.runtime.serve.app.create_app` (Open
Inference Protocol + /v1/screen, its dynamic batcher across requests, limits, auth, metrics),
one per replica, with replicas spread over a Ray cluster behind Serve's proxy.

    serve run dfx.runtime.ray.deployment:app_builder bundle=/models/faces replicas=4 threads=2
    # or from Python:
    from ray import serve
    serve.run(dfx.runtime.ray.deployment.application(ServeConfig(bundle="/models/faces"), replicas=4))

Each replica builds its app on its own node (`__serve_build_asgi_app__`), so nothing with
threads or a loaded model is pickled; Serve runs the app's lifespan, which loads the model on
the best backend of that node. Batching stays in the app: requests routed to one replica share
its batcher (`ServeConfig.batch`). The bundle path must exist on every node that runs a replica
(a shared filesystem, or the same path baked into the image).
"""

from __future__ import annotations

from typing import Any

from dfx.errors import require


def application(config: Any, *, replicas: int = 1, threads: int | None = None, gpus: float = 0.0,
                max_ongoing_requests: int | None = None) -> Any:
    """A bound Ray Serve application serving `config` (a dfx.runtime.serve.config.ServeConfig).

    `threads` CPUs are reserved per replica and given to the CPU runner (default: the config's
    threads, else 1); `gpus` per replica for GPU backends. `max_ongoing_requests` defaults to
    what one replica's batcher queue holds, so Serve routes the excess to other replicas
    instead of queueing it behind a full batcher."""
    require("ray.serve", "ray", "Ray Serve")
    from dataclasses import replace

    from ray import serve

    threads = threads or config.threads or 1
    config = replace(config, threads=threads)  # the runner uses exactly the CPUs Serve reserved
    # Every request carries at least one image, so a replica never admits more than its batcher
    # queue holds: beyond that Serve keeps requests in its own queue or routes them elsewhere.
    ongoing = max_ongoing_requests or config.batch.max_queue_images

    @serve.deployment(
        name="dfx",
        num_replicas=replicas,
        max_ongoing_requests=ongoing,
        ray_actor_options={"num_cpus": threads, "num_gpus": gpus},
        health_check_period_s=10,
    )
    @serve.ingress()
    class DfxServe:
        def __init__(self, serve_config: Any) -> None:
            self.serve_config = serve_config

        def __serve_build_asgi_app__(self) -> Any:
            from dfx.runtime.serve.app import create_app

            return create_app(self.serve_config)

    return DfxServe.bind(config)  # type: ignore[attr-defined]  # serve.deployment adds bind


def app_builder(args: dict[str, str]) -> Any:
    """For `serve run dfx.runtime.ray.deployment:app_builder bundle=PATH [replicas=N] [threads=N]
    [gpus=N] [backend=auto] [model_name=dfx]`, and `import_path` in a Serve config file."""
    from dfx.errors import DfxError
    from dfx.runtime.serve.config import ServeConfig

    if "bundle" not in args:
        raise DfxError("app_builder needs bundle=PATH", hint="serve run dfx.runtime.ray.deployment:app_builder bundle=/models/faces")
    config = ServeConfig(bundle=args["bundle"], backend=args.get("backend", "auto"), model_name=args.get("model_name", "dfx"))
    return application(
        config,
        replicas=int(args.get("replicas", 1)),
        threads=int(args["threads"]) if "threads" in args else None,
        gpus=float(args.get("gpus", 0)),
    )

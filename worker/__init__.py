"""The worker side: one Generator behind OpenAI's endpoints, registered in Consul.

    base         WorkerBase: what every endpoint builds on (the worker secret, checks, the slot, a proxy's answer)
    app          Worker: the FastAPI app in front of the Generator (the OpenAI endpoints, the life cycle)
    observe      around each generation request: its metrics and its trace, in one place
    metrics      the worker's Prometheus series (oaw_worker_*)
    answers      the Generator's outputs as OpenAI answers and SSE events
    responses    /v1/responses, by translation to chat
    relay        what a proxy worker passes on to its upstream as it is
    media        the media endpoints: speech, transcriptions, images, moderations, rerank, score (#11)
    concurrency  --max-concurrency: N at once, a bounded queue, 429 past it
    lifecycle    bind -> own health check -> register -> keep registered -> drain
    cli          template_worker.py and openai_worker.py
"""
from .app import Worker
from .cli import import_generator, openai_worker, template_worker

__all__ = ["Worker", "import_generator", "openai_worker", "template_worker"]

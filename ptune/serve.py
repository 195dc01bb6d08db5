"""``ptune serve``: many runs over one frozen backbone behind an HTTP JSON API (FastAPI on uvicorn; docs/serve.md).

    ptune serve outputs/sst2-run multirun/glue-sweep [host=127.0.0.1] [port=8000] [max_batch=32] [max_wait_ms=5]

    POST /predict  {"rows": [{"task": "sst2", "sentence": "a charming film"}, ...]}
                   -> {"predictions": [{"task": "sst2", "prediction": "positive", "scores": {"negative": 0.1, ...}}]}
    GET  /runs     what is loaded: each (run, task) entry, its method, labels and best metrics
    GET  /health   {"status": "ok", ...}
    GET  /docs     the OpenAPI docs

The runs load as ptune/pool.py loads them (one backbone; each run's folded prompts and heads). Requests are
checked as they arrive (in full, before they wait for a batch, so one bad row never touches another
request's), then a micro-batcher gathers the rows of concurrent requests into mixed-task batches of up to
``max_batch`` rows, waiting at most ``max_wait_ms`` after the first, and runs them on one worker thread.

Bad input is a 4xx with ``{"error": "<one line>"}`` and the server goes on: a body that is not JSON (400), not
of the schema or naming an unknown task, a missing or extra column, a value of the wrong type (422), a body over
``max_bytes`` or with more than ``max_rows`` rows, or a text over ``max_chars`` characters (413), a client that
disconnects before its body is complete (400, logged; nobody is left to read it). A text within ``max_chars``
but longer than the run's ``model.max_length`` tokens is truncated, as in training and ``ptune predict``.
SIGTERM (or Ctrl-C) stops listening, answers the requests in flight (for up to ``GRACE_S``), then exits 0.
"""

# no ``from __future__ import annotations``: FastAPI reads the handlers' annotations (``Request``, imported where the
# app is built so that ptune runs without the serve extra) as objects, not as names to resolve in this module
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from ptune.errors import ConfigError, PtuneError
from ptune.pool import TASK, Entry, Pool
from ptune.tasks.base import Example


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the ready line names it)
    max_batch: int = 32  # rows in one mixed-task forward pass (a larger request runs as its own batches)
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    max_rows: int = 1024  # rows in one request
    max_bytes: int = 1_000_000  # bytes in one request body
    max_chars: int = 20_000  # characters in one text value (longer texts are truncated to model.max_length tokens)


def need_extra() -> None:
    """FastAPI and uvicorn come with the ``serve`` extra; without them, one line (before any model loads)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"ptune serve needs the serve extra ({err.name} is not installed): "
                          "pip install -e '.[serve]'") from None


def parse(args: Sequence[str]) -> tuple[list[str], Settings, list[str]]:
    """``RUN_OR_SWEEP_DIR... [host=] [port=] [max_batch=] [max_wait_ms=] [max_rows=] [max_bytes=] [max_chars=]
    [dotted.key=value ...]`` -> the folders, the settings, the run-config overrides (``trainer.device=cpu``)."""
    from ptune.config import check_unique

    check_unique([a for a in args if "=" in a])
    folders = [a for a in args if "=" not in a]
    settings, overrides = Settings(), []
    keys = {f.name: f for f in fields(Settings)}
    for arg in (a for a in args if "=" in a):
        key, value = arg.split("=", 1)
        if "." in key:
            overrides.append(arg)
            continue
        if key not in keys:
            raise ConfigError(f"ptune serve takes {', '.join(k + '=' for k in keys)} and dotted run keys "
                              f"(trainer.device=cpu); {key!r} is not one of them")
        kind = type(getattr(settings, key))
        try:
            parsed = kind(value)
        except ValueError:
            raise ConfigError(f"ptune serve: {key}={value!r} is not {'a number' if kind is not str else 'text'}") from None
        if kind is not str and (parsed < 0 or (parsed == 0 and key != "port" and key != "max_wait_ms")):
            raise ConfigError(f"ptune serve: {key}={value} must be {'>= 0' if key in ('port', 'max_wait_ms') else '>= 1'}")
        setattr(settings, key, parsed)
    if not folders:
        raise ConfigError("ptune serve needs run or sweep folders, e.g. ptune serve outputs/<run> multirun/<sweep>")
    return folders, settings, overrides


GRACE_S = 60  # after SIGTERM, how long requests in flight may take before they are cancelled


class Refused(Exception):
    """A request the server answers with a 4xx and one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def prediction(entry: Entry, out: dict[str, Any], example: Example) -> dict[str, Any]:
    """A row's answer: its task, prediction, and each label's probability (a regression value has none)."""
    scores = {k[len("score_"):]: v for k, v in out.items() if k.startswith("score_")}
    if "scores" in out:  # per-row candidates (ReCoRD's entities): by candidate, else by position
        names = list(example.candidates) if len(example.candidates) == len(out["scores"]) else None
        scores = {(names[i] if names else str(i)): p for i, p in enumerate(out["scores"])}
    return {"task": entry.name, "prediction": out["prediction"], "scores": scores or None}


def check_request(data: Any, settings: Settings) -> list[dict]:
    """The rows of a parsed body, or :class:`Refused`: the body's shape, the row count, over-long texts."""
    if not isinstance(data, dict) or "rows" not in data:
        raise Refused(422, 'the body must be a JSON object {"rows": [{"task": NAME, <its columns>}, ...]}')
    extra = [k for k in data if k != "rows"]
    if extra:
        raise Refused(422, f"the body holds {extra[0]!r}; it takes only \"rows\"")
    rows = data["rows"]
    if not isinstance(rows, list) or not rows:
        raise Refused(422, '"rows" must be a non-empty list of objects, each {"task": NAME, <its columns>}')
    if len(rows) > settings.max_rows:
        raise Refused(413, f"the request holds {len(rows)} rows; at most {settings.max_rows} (max_rows=) per request")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise Refused(422, f"rows[{i}] is {type(row).__name__}, not an object of columns")
        for column, value in row.items():
            if isinstance(value, str) and len(value) > settings.max_chars:
                raise Refused(413, f"rows[{i}]: column {column!r} holds {len(value)} characters; at most "
                                   f"{settings.max_chars} (max_chars=); shorter texts over the model's max_length "
                                   "tokens are truncated")
    return rows


class Batcher:
    """Gathers checked requests into mixed-task batches: up to ``max_batch`` rows, or what came within
    ``max_wait_ms`` of the first; one batch at a time on a worker thread."""

    def __init__(self, pool: Pool, settings: Settings):
        self.pool, self.settings = pool, settings
        self.queue: asyncio.Queue = asyncio.Queue()
        self.answered = self.batches = 0  # requests answered, batches run

    async def submit(self, checked: list, n: int) -> list:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((checked, n, future))
        return await future

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            deadline = loop.time() + self.settings.max_wait_ms / 1000
            while sum(j[1] for j in jobs) < self.settings.max_batch:
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time())))
                except asyncio.TimeoutError:
                    break
            await self.run(jobs)

    async def run(self, jobs: list) -> None:
        merged, offset = [], 0
        for checked, n, _ in jobs:  # one request's rows after another's
            merged += [(e, [i + offset for i in idx], examples) for e, idx, examples in checked]
            offset += n
        try:
            results = await asyncio.to_thread(self.pool.run, merged, offset)
        except Exception as err:  # an internal error fails this batch's requests (500), not the server
            for *_, future in jobs:
                if not future.done():
                    future.set_exception(err)
            return
        offset = 0
        for _, n, future in jobs:
            if not future.done():  # its client may have gone
                future.set_result(results[offset : offset + n])
            offset += n
        self.answered += len(jobs)
        self.batches += 1


def schemas():
    """The request and response bodies as pydantic models (the OpenAPI docs show them)."""
    from pydantic import BaseModel, ConfigDict, Field

    class Row(BaseModel):
        model_config = ConfigDict(extra="allow", json_schema_extra={"example": {TASK: "sst2", "sentence": "a gem"}})
        task: str = Field(description="the task's name, or RUN:TASK when two loaded runs share it (GET /runs)")

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        rows: list[Row] = Field(description="each row: its task and that task's input columns, nothing else")

    class Prediction(BaseModel):
        task: str
        prediction: Any = Field(description="the label, or the value of a regression task (STS-B)")
        scores: dict[str, float] | None = Field(description="each label's probability; null for regression")

    class PredictResponse(BaseModel):
        predictions: list[Prediction]

    return PredictRequest, PredictResponse


def app(pool: Pool, settings: Settings):
    """The FastAPI application over a loaded pool."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.requests import ClientDisconnect

    PredictRequest, PredictResponse = schemas()

    @asynccontextmanager
    async def lifespan(application):
        batcher = application.state.batcher = Batcher(pool, settings)
        task = asyncio.create_task(batcher.serve())
        yield
        task.cancel()

    api = FastAPI(title="ptune serve", lifespan=lifespan,
                  description="Many prompt-tuned runs over one frozen model; rows of different tasks share a batch.")

    def refuse(status: int, message: str) -> JSONResponse:
        print(f"ptune serve: refused ({status}): {message}", file=sys.stderr, flush=True)
        return JSONResponse({"error": message}, status_code=status)

    @api.post("/predict", response_model=PredictResponse, responses={400: {}, 413: {}, 422: {}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(request: Request):
        """Predictions for rows of any loaded tasks, in row order; each row names its task (``GET /runs``)."""
        try:
            declared = int(request.headers.get("content-length") or 0)
            if declared > settings.max_bytes:
                raise Refused(413, f"the body is {declared} bytes; at most {settings.max_bytes} (max_bytes=)")
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > settings.max_bytes:
                    raise Refused(413, f"the body is over {settings.max_bytes} bytes (max_bytes=)")
            try:
                data = json.loads(body)
            except json.JSONDecodeError as err:
                raise Refused(400, f"the body is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
                              ) from None
            except ValueError:  # bytes that are not UTF-8 (or UTF-16/32)
                raise Refused(400, "the body is not valid JSON (it is not UTF-8 text)") from None
            rows = check_request(data, settings)
            checked = await asyncio.to_thread(pool.check, rows, "the request", lambda i: f"rows[{i}]", False)
        except Refused as err:
            return refuse(err.status, str(err))
        except PtuneError as err:
            return refuse(422, str(err).removeprefix("the request, "))
        except ClientDisconnect:
            return refuse(400, "the client disconnected before its request body was complete")
        results = await request.app.state.batcher.submit(checked, len(rows))
        return {"predictions": [prediction(e, out, ex) for e, out, ex in results]}

    @api.get("/runs")
    async def runs():
        """Each loaded (run, task) entry: the name rows use, its run, method, labels, input columns, best metrics."""
        return {"model": pool.cfg.model.name, "entries": [e.describe() for e in pool.entries]}

    @api.get("/health")
    async def health(request: Request):
        return {"status": "ok", "runs": len(pool.folders), "tasks": len(pool.entries),
                "requests": request.app.state.batcher.answered, "batches": request.app.state.batcher.batches}

    return api


def command(args: Sequence[str]) -> int:
    """``ptune serve``: every check, then the model, then the server; prints its URL once it listens."""
    need_extra()
    import uvicorn

    folders, settings, overrides = parse(args)
    pool = Pool.open(folders, overrides, "ptune serve", batch_size=settings.max_batch)
    pool.load()
    stopped: list[int] = []

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                url = f"http://{host}:{port}"
                print(f"ptune serve: {len(pool.entries)} task(s) of {len(pool.folders)} run(s) on "
                      f"{pool.cfg.model.name} at {url} (docs: {url}/docs)", flush=True)

    for sig in (signal.SIGTERM, signal.SIGINT):  # uvicorn re-raises the signal after its graceful shutdown
        signal.signal(sig, lambda signum, _frame: stopped.append(signum))
    config = uvicorn.Config(app(pool, settings), host=settings.host, port=settings.port, access_log=False,
                            log_level="warning", timeout_graceful_shutdown=GRACE_S)
    Server(config).run()
    why = signal.Signals(stopped[0]).name if stopped else "no signal"
    print(f"ptune serve: stopped ({why}) after answering the requests in flight", file=sys.stderr, flush=True)
    return 0

"""Grid image generators behind one interface, created by name from a registry.

``create_backend("http", endpoint=..., payload={...}, api_key_env="MY_API_KEY")``,
``create_backend("diffusers", model_dir=...)`` or ``create_backend("import", files=[...])``.
:func:`generate_grids` runs any of them against a :class:`~fer_core.synthetic.ledger.CreditLedger`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import email.utils
import hashlib
import http.client
import inspect
import io
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from fer_core.errors import ConfigError, DataError, FerCoreError, ImageDecodeError, InvalidArgument, ModelLoadError
from fer_core.images import load_rgb
from fer_core.synthetic.ledger import COMMITTED, CreditLedger
from fer_core.synthetic.prompts import Prompt
from fer_core.validation import Interval, StrOptions, validate_params

log = logging.getLogger(__name__)


class GenerationError(FerCoreError):
    """The generator gave no usable image (unreachable, refused, an error, or not an image)."""


@dataclass(frozen=True)
class GeneratedImage:
    """Encoded image bytes, the model that made them and, for an imported file, where it came from."""

    data: bytes
    model: str
    source: str | None = None


class GridBackend(ABC):
    """Makes one grid image for a prompt."""

    #: The registry name.
    name: str
    #: Credits one grid costs.
    credits_per_grid: int = 1

    @abstractmethod
    def generate(self, prompt: Prompt, seed: int) -> GeneratedImage:
        """One image for ``prompt``; a :class:`GenerationError` when none comes back."""

    def check_ready(self, ledger: CreditLedger) -> None:
        """Raise a clear error when this backend cannot make its grids now (no API key, images the
        ledger already holds); :func:`generate_grids` calls it before reserving any credit."""

    @property
    @abstractmethod
    def model(self) -> str:
        """The model (or source) name recorded in the ledger."""


BackendType = TypeVar("BackendType", bound=type[GridBackend])
#: Backend name -> class; filled by :func:`register_backend`.
BACKENDS: dict[str, type[GridBackend]] = {}


def register_backend(cls: BackendType) -> BackendType:
    """Class decorator: make ``cls`` available to :func:`create_backend` under ``cls.name``."""
    BACKENDS[cls.name] = cls
    return cls


@validate_params({"name": [StrOptions(BACKENDS)]})
def create_backend(name: str, **kwargs: Any) -> GridBackend:
    """The backend registered as ``name`` (``"http"``, ``"diffusers"``, ``"import"``), built with ``kwargs``."""
    parameters = inspect.signature(BACKENDS[name]).parameters
    unknown = sorted(set(kwargs) - set(parameters))
    missing = [p for p, spec in parameters.items() if spec.default is inspect.Parameter.empty and p not in kwargs]
    if unknown or missing:
        secret = " (API keys are read from the environment only: name the variable with api_key_env)" \
            if any("key" in k.lower() or "token" in k.lower() for k in unknown) else ""
        problems = [f"unknown arguments {unknown}"] * bool(unknown) + [f"missing arguments {missing}"] * bool(missing)
        raise InvalidArgument(f"grid backend {name!r}: {', '.join(problems)}; accepted: {list(parameters)}{secret}")
    return BACKENDS[name](**kwargs)


def _fill(template: Any, values: dict[str, Any]) -> Any:
    """``template`` with every string that is exactly ``"{key}"`` replaced by ``values[key]``
    (keeping its type) and other ``{key}`` occurrences formatted into the string."""
    if isinstance(template, dict):
        return {k: _fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, values) for v in template]
    if isinstance(template, str):
        key = template[1:-1]
        if template.startswith("{") and template.endswith("}") and key in values:
            return values[key]
        try:
            return template.format(**values)
        except (KeyError, IndexError, ValueError) as exc:
            raise InvalidArgument(f"payload template {template!r}: unknown or bad placeholder ({exc}); "
                                  f"available: {sorted(values)}") from None
    return template


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _json_path(value: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise GenerationError(f"the JSON response has no field {path!r} (stopped at {part!r})")
    return value


#: A wait in seconds: a number >= 0.
_SECONDS = Interval(Real, 0, None)


@register_backend
class HttpBackend(GridBackend):
    """A hosted text-to-image API over HTTP(S).

    The request is a POST of ``payload`` as JSON, where ``"{prompt}"``, ``"{seed}"`` and
    ``"{size}"`` are filled in. The answer may be the image bytes (``image/*``) or JSON holding a
    base64 image at ``image_field`` (dotted path, e.g. ``"data.0.b64_json"``; a ``data:`` URL is
    accepted). 429, 5xx and timeouts are retried with exponential backoff, honouring Retry-After.

    Args:
        endpoint: the URL.
        payload: the JSON body template.
        api_key_env: name of the environment variable holding the API key (read per request,
            sent as ``auth_header: auth_scheme key``; never logged or stored). None: no key.
        image_field: where the base64 image is in a JSON answer.
        model_name: recorded in the ledger.
        size: image side filled into ``"{size}"``.
        timeout: seconds per request.
        max_retries: retries after the first try.
        backoff: first retry delay in seconds (doubling each retry).
        max_delay: longest wait between tries (also caps Retry-After).
        min_interval: at least this many seconds between requests (rate limit).
        credits_per_grid: credits one grid costs.
        sleep: the sleep function (tests pass a recorder).
    """

    name = "http"

    @validate_params({"endpoint": [str], "api_key_env": [str, None], "max_retries": [Interval(Integral, 0, None)],
                      "timeout": [Interval(Real, 0, None, closed="neither")], "backoff": [_SECONDS],
                      "max_delay": [_SECONDS], "min_interval": [_SECONDS]})
    def __init__(self, endpoint: str, payload: dict[str, Any] | None = None, api_key_env: str | None = None,
                 image_field: str = "data.0.b64_json", model_name: str = "http", size: int = 1024,
                 auth_header: str = "Authorization", auth_scheme: str = "Bearer", timeout: float = 120.0,
                 max_retries: int = 4, backoff: float = 2.0, max_delay: float = 60.0, min_interval: float = 0.0,
                 credits_per_grid: int = 1, sleep: Callable[[float], None] = time.sleep) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise InvalidArgument(f"endpoint: expected an http:// or https:// URL, got {endpoint!r}")
        if api_key_env == "":
            raise InvalidArgument("api_key_env: expected the name of an environment variable, got ''")
        self.endpoint = endpoint
        self.payload = copy.deepcopy(payload if payload is not None else {"prompt": "{prompt}", "seed": "{seed}"})
        self.api_key_env = api_key_env
        self.image_field = image_field
        self.model_name = model_name
        self.size = size
        self.auth_header, self.auth_scheme = auth_header, auth_scheme
        self.timeout, self.max_retries = float(timeout), max_retries
        self.backoff, self.max_delay, self.min_interval = float(backoff), float(max_delay), float(min_interval)
        self.credits_per_grid = credits_per_grid
        self._sleep = sleep
        self._last_request = -float("inf")
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        return self.model_name

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "image/*, application/json"}
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(f"the API key variable {self.api_key_env} is not set; export it before generating")
            headers[self.auth_header] = f"{self.auth_scheme} {key}".strip()
        return headers

    def check_ready(self, ledger: CreditLedger) -> None:
        self._headers()  # the API key is set

    def _wait_for_rate_limit(self) -> None:
        with self._lock:
            wait = self._last_request + self.min_interval - time.monotonic()
            if wait > 0:
                self._sleep(wait)
            self._last_request = time.monotonic()

    def generate(self, prompt: Prompt, seed: int) -> GeneratedImage:
        body = json.dumps(_fill(self.payload, {"prompt": prompt.text, "seed": seed, "size": self.size})).encode()
        headers = self._headers()
        last_problem, retry_after = "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(self.backoff * 2 ** (attempt - 1), self.max_delay)
                delay = max(delay, min(retry_after, self.max_delay)) if retry_after is not None else delay
                log.info("grid request failed (%s); retry %d/%d in %.1f s", last_problem, attempt, self.max_retries,
                         delay)
                self._sleep(delay)
            retry_after = None
            self._wait_for_rate_limit()
            request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return self._image(response.read(), response.headers.get("Content-Type", ""))
            except urllib.error.HTTPError as exc:
                last_problem = f"HTTP {exc.code} {exc.reason}"
                if exc.code != 429 and exc.code < 500:
                    raise GenerationError(f"{self.endpoint} refused the request: {last_problem}: "
                                          f"{exc.read()[:300].decode(errors='replace')}") from None
                retry_after = _retry_after(exc.headers.get("Retry-After"))
            except TimeoutError:
                last_problem = f"no answer within {self.timeout:g} s"
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                    last_problem = f"no answer within {self.timeout:g} s"
                else:
                    raise GenerationError(f"cannot reach {self.endpoint}: {exc.reason} (offline, wrong URL, or "
                                          f"the service is down)") from None
            except (ConnectionError, http.client.HTTPException) as exc:
                last_problem = f"connection dropped: {exc}"
        raise GenerationError(f"{self.endpoint}: no image after {self.max_retries + 1} tries; "
                              f"last problem: {last_problem}")

    def _image(self, data: bytes, content_type: str) -> GeneratedImage:
        if content_type.split(";")[0].strip().lower() == "application/json" or data[:1] in (b"{", b"["):
            try:
                answer = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise GenerationError(f"{self.endpoint} answered invalid JSON: {exc}") from None
            encoded = _json_path(answer, self.image_field)
            if not isinstance(encoded, str):
                raise GenerationError(f"the JSON field {self.image_field!r} is not a base64 string")
            try:
                data = base64.b64decode(encoded.split(",", 1)[1] if encoded.startswith("data:") else encoded,
                                        validate=True)
            except (binascii.Error, ValueError) as exc:
                raise GenerationError(f"the JSON field {self.image_field!r} is not valid base64: {exc}") from None
        check_image_bytes(data, self.endpoint)
        return GeneratedImage(data, self.model_name)


def check_image_bytes(data: bytes, source: str) -> None:
    """Raise :class:`GenerationError` unless ``data`` decodes as an image."""
    try:
        load_rgb(data)
    except ImageDecodeError as exc:
        raise GenerationError(f"{source} did not return an image ({len(data)} bytes): {exc}") from None


@register_backend
class DiffusersBackend(GridBackend):
    """A local Stable Diffusion / Flux pipeline from a model folder the user has (never downloads).

    Needs the optional ``diffusers`` package. Args: ``model_dir`` (a ``from_pretrained`` folder),
    ``steps``, ``guidance``, ``size``, ``device`` (``"cuda"``, ``"cpu"``, ...). Local grids cost no credits.
    """

    name = "diffusers"
    credits_per_grid = 0

    def __init__(self, model_dir: str | Path, steps: int = 30, guidance: float = 7.0, size: int = 1024,
                 device: str = "cuda") -> None:
        self.model_dir = Path(model_dir).expanduser()
        if not self.model_dir.is_dir():
            raise ModelLoadError(f"diffusers model folder not found: {self.model_dir}; give the folder of a "
                                 f"pipeline saved with save_pretrained (nothing is downloaded)")
        try:
            import diffusers
        except ImportError:
            raise ModelLoadError("the diffusers backend needs the optional package 'diffusers' "
                                 "(pip install diffusers accelerate); use the http or import backend otherwise"
                                 ) from None
        self.steps, self.guidance, self.size, self.device = steps, guidance, size, device
        try:
            self._pipeline = diffusers.AutoPipelineForText2Image.from_pretrained(
                str(self.model_dir), local_files_only=True).to(device)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load a diffusers pipeline from {self.model_dir}: {exc}") from None

    @property
    def model(self) -> str:
        return f"diffusers:{self.model_dir.name}"

    def generate(self, prompt: Prompt, seed: int) -> GeneratedImage:
        import torch
        generator = torch.Generator(device=self.device).manual_seed(seed)
        image = self._pipeline(prompt.text, num_inference_steps=self.steps, guidance_scale=self.guidance,
                               height=self.size, width=self.size, generator=generator).images[0]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return GeneratedImage(buffer.getvalue(), self.model)


@register_backend
class ImportBackend(GridBackend):
    """Grid images the user made elsewhere (a web UI, another machine), taken in order, one per call.

    Args:
        files: the image files, in the order of the prompts they answer.
        model_name: the model that made them, recorded in the ledger.
        credits_per_grid: credits each image cost where it was made.
    """

    name = "import"

    def __init__(self, files: Sequence[str | Path], model_name: str = "imported", credits_per_grid: int = 1) -> None:
        self.files = [Path(f).expanduser() for f in files]
        missing = [str(f) for f in self.files if not f.is_file()]
        if not self.files or missing:
            raise DataError(f"import: expected existing image files, missing: {missing or 'no files given'}")
        self.model_name = model_name
        self.credits_per_grid = credits_per_grid
        self._next = 0

    @property
    def model(self) -> str:
        return self.model_name

    def check_ready(self, ledger: CreditLedger) -> None:
        """Refuse a batch holding an image twice, or an image the ledger already holds (content hash)."""
        seen: dict[str, Path] = {}
        known = {e["sha256"]: e for e in ledger.entries(COMMITTED) if e.get("sha256")}
        problems = []
        for file in self.files:
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
            if digest in seen:
                problems.append(f"{file} is the same image as {seen[digest]}")
            elif digest in known:
                entry = known[digest]
                problems.append(f"{file} was already imported as ledger entry {entry['id']} ({entry.get('emotion')}, "
                                f"batch {entry.get('batch') or entry['id']}, stored as {entry['file']})")
            seen.setdefault(digest, file)
        if problems:
            raise DataError("import refused, nothing was recorded: " + "; ".join(problems) +
                            ". Leave those files out, or undo the earlier import with 'fer-core synth revert ID'")

    def generate(self, prompt: Prompt, seed: int) -> GeneratedImage:
        if self._next >= len(self.files):
            raise GenerationError(f"import: only {len(self.files)} files were given")
        file = self.files[self._next]
        self._next += 1
        data = file.read_bytes()
        check_image_bytes(data, str(file))
        return GeneratedImage(data, self.model_name, str(file))


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _suffix(data: bytes) -> str:
    from PIL import Image
    with Image.open(io.BytesIO(data)) as image:
        return {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}.get(image.format or "", ".png")


def generate_grids(backend: GridBackend, ledger: CreditLedger, jobs: Iterable[tuple[Prompt, int]],
                   raw_dir: str | Path | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Make one grid per ``(prompt, seed)`` job, each paid through ``ledger``.

    The backend is checked first (:meth:`GridBackend.check_ready`: an unset API key or an image
    imported before stops the run with the ledger untouched). Each job then reserves its credits
    (:class:`CreditBudgetError` stops the run before the call), the image is written to
    ``raw_dir`` (default: ``raw/`` beside the ledger) and the entry committed; a
    :class:`GenerationError` releases the credit and the run goes on. Any other interruption
    leaves the reservation pending (see :meth:`CreditLedger.pending`). Every entry of one call
    shares a ``batch`` id (what ``fer-core synth revert`` takes). Returns the settled entries.
    """
    raw_dir = Path(raw_dir) if raw_dir is not None else ledger.path.parent / "raw"
    jobs = list(jobs)
    backend.check_ready(ledger)
    batch = uuid.uuid4().hex[:8]
    settled = []
    for prompt, seed in tqdm(jobs, desc=f"grids via {backend.name}", unit="grid", disable=not progress):
        entry_id = ledger.reserve(backend.credits_per_grid, **prompt.to_dict(), seed=seed, backend=backend.name,
                                  model=backend.model, batch=batch)
        try:
            image = backend.generate(prompt, seed)
        except GenerationError as exc:
            log.warning("grid %s failed: %s", entry_id, exc)
            settled.append(ledger.release(entry_id, str(exc)))
            continue
        digest = hashlib.sha256(image.data).hexdigest()
        file = raw_dir / f"{prompt.spec.emotion.lower()}_{prompt.id}_{seed}_{entry_id}{_suffix(image.data)}"
        _write_atomic(file, image.data)
        settled.append(ledger.commit(entry_id, os.path.relpath(file, ledger.path.parent), digest, image.source))
    return settled

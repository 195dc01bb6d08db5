"""Where models and data come from, settled once before anything reaches for the network.

``ptune`` runs offline by itself when a ``shared`` folder (``models/hub`` a Hugging Face hub cache,
``data/hub`` GLUE/SuperGLUE parquet files in hub layout) sits beside the checkout or the working directory,
or is named by ``$PTUNE_SHARED``: it sets ``HF_HUB_OFFLINE=1``, ``HF_HUB_CACHE`` and ``PTUNE_DATA_DIR`` and says so
in one line. Without one, and without ``HF_HUB_OFFLINE`` set, it checks in seconds whether the hub answers; if
not, it goes on offline from the local cache instead of spending minutes in retries, and says how to skip the
check. ``HF_HUB_OFFLINE`` set either way is left alone. Must run before ``huggingface_hub`` is imported (it
reads these variables once, at import).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

HUB_URL = "https://huggingface.co/api/models?limit=1"
PROBE_SECONDS = 3.0


def shared_folder() -> Path | None:
    """``$PTUNE_SHARED``, else a ``shared`` folder beside the checkout or beside the working directory."""
    given = os.environ.get("PTUNE_SHARED")
    candidates = [Path(given)] if given else [Path(__file__).resolve().parents[1].parent / "shared",
                                              Path.cwd().parent / "shared", Path.cwd() / "shared"]
    return next((c for c in candidates if (c / "models" / "hub").is_dir()), None)


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """Whether the hub answers an HTTPS request within ``timeout`` (any HTTP status counts as an answer; a
    proxy that takes the connection but never answers does not)."""
    request = urllib.request.Request(HUB_URL, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError, timeouts, TLS errors
        return False


def settle(say=lambda line: print(line, file=sys.stderr)) -> str:
    """Set the hub environment for this process; returns what it chose: ``set`` (left as the user set it),
    ``shared`` (offline from a shared folder), ``online`` or ``offline`` (the hub did not answer)."""
    if "HF_HUB_OFFLINE" in os.environ:
        return "set"
    shared = shared_folder()
    if shared is not None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("HF_HUB_CACHE", str(shared / "models" / "hub"))
        data = shared / "data" / "hub"
        if data.is_dir():
            os.environ.setdefault("PTUNE_DATA_DIR", str(data))
        where = f"models from {os.environ['HF_HUB_CACHE']}" + (f", data from {data}" if data.is_dir() else "")
        say(f"ptune: offline ({where}; found {shared}); HF_HUB_OFFLINE=0 uses the hub instead")
        return "shared"
    if hub_reachable():
        return "online"
    os.environ["HF_HUB_OFFLINE"] = "1"
    say(f"ptune: the Hugging Face hub did not answer in {PROBE_SECONDS:.0f} s; going on offline from the local cache "
        f"({os.environ.get('HF_HUB_CACHE', '~/.cache/huggingface/hub')}); set HF_HUB_OFFLINE=1 (and HF_HUB_CACHE, "
        "data.root=) to skip this check, or PTUNE_SHARED=<folder with models/hub and data/hub>")
    return "offline"

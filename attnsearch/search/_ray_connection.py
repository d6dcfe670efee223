"""The driver's connection to Ray (a study's, a retrain's): ``ray.address`` resolved and checked, ``ray.init``,
the per-trial resource check."""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

import grpc  # a Ray dependency
import ray
from ray._private import services  # Ray's own address lookup; no public equivalent

from .. import uris
from ..contract import ConfigError

if TYPE_CHECKING:
    from ..config import Job

_RAY_ADDRESS_FORMS = (
    "the head's GCS address HOST:PORT that `ray start --head` prints (port 6379 by default), ray://HOST:10001 "
    "for Ray Client, or auto for the cluster this machine belongs to"
)


def _discover_address() -> tuple[str, str]:
    """What ``ray.init(address="auto")`` would join, and where that came from, without joining it."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env not in ("auto", "local"):
        return env, "$RAY_ADDRESS"
    try:
        found = services.get_ray_address_from_environment("auto", None)
    except ConnectionError:
        found = None
    if not found or found == "auto":
        raise ConfigError(
            "ray.address: 'auto' found no running Ray cluster on this machine (RAY_ADDRESS is unset and no "
            "`ray start` node runs here); start one (`ray start --head`), give the head's address as "
            "ray.address: HOST:6379, or set ray.address: null to start a local Ray"
        )
    return found, "Ray's lookup on this machine"


def resolve_ray_address(address: str | None, timeout_s: float | None = None) -> str | None:
    """The Ray cluster address the driver joins, checked to answer within ``timeout_s``; None: a local Ray.

    ``null``/``local`` -> a local Ray, unless ``$RAY_ADDRESS`` names a cluster (as Ray's own ``ray.init`` does);
    ``auto`` -> ``$RAY_ADDRESS``, else the cluster Ray finds on this machine. Raises ``ConfigError`` naming
    ``ray.address`` and the fix when the address is malformed, is a dashboard (Jobs API) address, or no Ray
    server answers there: a bounded check (seconds) before ``ray.init``, which retries a dead address for minutes.
    """
    address = (address or "").strip()
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if address in ("", "local"):
        if not address and env and env not in ("auto", "local"):
            address, label = env, f"$RAY_ADDRESS={env!r} (ray.address is null)"
        else:
            return None
    elif address == "auto":
        found, where = _discover_address()
        address, label = found, f"ray.address='auto' (-> {found!r} from {where})"
    else:
        label = f"ray.address={address!r}"
    timeout_s = uris.RAY_CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    scheme = uris.split_scheme(address)
    target = address
    if scheme:
        if scheme[0].lower() in ("http", "https"):
            raise ConfigError(
                f"{label}: that is a Ray dashboard (Jobs API) address; a driver joins the cluster's GCS address "
                f"instead ({_RAY_ADDRESS_FORMS}); or let the cluster run the study: "
                f"`attnsearch submit JOB --address {address}`"
            )
        if scheme[0].lower() != "ray":
            return address  # a client scheme Ray resolves itself (e.g. anyscale://)
        target = scheme[1]
    hostport = uris.split_host_port(target)
    if hostport is None:
        raise ConfigError(f"{label}: not a Ray address; expected {_RAY_ADDRESS_FORMS}, or null for a local Ray")
    host, port = hostport
    started = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except TimeoutError:
        reason = f"no answer within {timeout_s:g} s"
    except socket.gaierror as exc:
        reason = f"unknown host: {exc.strerror or exc}"
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
    else:
        if _speaks_grpc(host, port, max(1.0, timeout_s - (time.monotonic() - started))):
            return address
        raise ConfigError(
            f"{label}: something accepts connections at {host}:{port} but it is not a Ray GCS or Ray Client "
            f"server (no gRPC answer within {timeout_s:g} s; a dashboard port such as 8265 is for "
            f"`attnsearch submit`); correct ray.address ({_RAY_ADDRESS_FORMS})"
        )
    raise ConfigError(
        f"{label}: no Ray cluster answers at {host}:{port} ({reason}); start the head there "
        f"(`ray start --head --port {port}`), correct ray.address ({_RAY_ADDRESS_FORMS}), or set "
        f"ray.address: null for a local Ray"
    )


def _speaks_grpc(host: str, port: int, timeout_s: float) -> bool:
    """Whether an HTTP/2 (gRPC) handshake succeeds: what a GCS and a Ray Client server do and an HTTP server
    or a wrong port does not; ray.init would otherwise wait on such a port for minutes."""
    if os.environ.get("RAY_USE_TLS", "").lower() in ("1", "true"):
        return True  # a TLS cluster: a plaintext handshake proves nothing; the TCP check has to do
    channel = grpc.insecure_channel(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def init_ray(job: Job) -> None:
    """Join the cluster at ``ray.address`` (checked to answer first) or start a local Ray."""
    if ray.is_initialized():
        return
    # Trial output stays in the trial's log files; the driver prints one progress line per event instead.
    kwargs: dict[str, Any] = dict(
        include_dashboard=False, configure_logging=True, logging_level="WARNING",
        log_to_driver=os.environ.get("ATTNSEARCH_TRIAL_LOGS", "0") == "1",
    )
    address = resolve_ray_address(job.ray.address)
    if address is not None:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:  # auth, version mismatch...
            text = str(exc).strip().splitlines()
            raise ConfigError(
                f"ray.address={job.ray.address!r}: cannot join the Ray cluster at {address}: "
                f"{type(exc).__name__}: {text[0] if text else ''}"
            ) from None
        return
    # "local": a fresh local Ray even when a `ray start` node ran on this machine (address=None would join the
    # cluster in Ray's address file and then refuse num_cpus); joining a cluster is what ray.address is for.
    ray.init(
        address="local",
        num_cpus=job.ray.num_cpus or os.cpu_count(),
        num_gpus=job.ray.num_gpus,
        dashboard_host="127.0.0.1",
        **kwargs,
    )


def check_cluster_resources(job: Job) -> None:
    """Refuse a job whose per-trial resources no node can provide, instead of pending forever."""
    if job.ray.autoscaling:
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    want = {"CPU": float(job.resources.cpu), "GPU": float(job.resources.gpu)}
    have = [{k: float(n["Resources"].get(k, 0.0)) for k in want} for n in nodes]
    if not any(all(h[k] >= v for k, v in want.items()) for h in have):
        listing = "; ".join(f"node {i}: {h['CPU']:g} CPU, {h['GPU']:g} GPU" for i, h in enumerate(have)) or "no nodes"
        raise ConfigError(
            f"resources: each trial asks for {want['CPU']:g} CPU and {want['GPU']:g} GPU, but no node of the "
            f"cluster has that ({listing}); lower resources.cpu/resources.gpu, add nodes, or set ray.autoscaling: true "
            "if an autoscaler will start such nodes"
        )

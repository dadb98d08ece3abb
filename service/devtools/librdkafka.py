"""librdkafka through ctypes: the functions of its mock cluster that `EmbeddedKafka` calls.

The ``confluent-kafka`` wheel bundles librdkafka; it is loaded from there first, else
from the system.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["BrokerError", "err2str", "load_library", "new_handle", "optional"]

_RD_KAFKA_PRODUCER = 0
_REQUIRED: dict[str, tuple[Any, list[Any]]] = {
    "rd_kafka_conf_new": (ctypes.c_void_p, []),
    "rd_kafka_conf_destroy": (None, [ctypes.c_void_p]),
    "rd_kafka_conf_set": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t],
    ),
    "rd_kafka_new": (
        ctypes.c_void_p,
        [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t],
    ),
    "rd_kafka_destroy": (None, [ctypes.c_void_p]),
    "rd_kafka_err2str": (ctypes.c_char_p, [ctypes.c_int]),
    "rd_kafka_mock_cluster_new": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int]),
    "rd_kafka_mock_cluster_destroy": (None, [ctypes.c_void_p]),
    "rd_kafka_mock_cluster_bootstraps": (ctypes.c_char_p, [ctypes.c_void_p]),
    "rd_kafka_mock_topic_create": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int],
    ),
}
_OPTIONAL: dict[str, tuple[Any, list[Any]]] = {
    "rd_kafka_mock_group_initial_rebalance_delay_ms": (
        None,
        [ctypes.c_void_p, ctypes.c_int32],
    ),
    "rd_kafka_mock_broker_set_host_port": (
        None,
        [ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p, ctypes.c_int],
    ),
    "rd_kafka_mock_topic_set_error": (None, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]),
    "rd_kafka_mock_push_request_errors_array": (
        None,
        [ctypes.c_void_p, ctypes.c_int16, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int)],
    ),
}


class BrokerError(RuntimeError):
    """The embedded broker could not be loaded, started or changed."""


def _library_candidates() -> list[Path]:
    """Paths where a wheel of confluent-kafka keeps its bundled librdkafka."""
    import confluent_kafka  # deferred: only needed to locate the wheel

    package = Path(confluent_kafka.__file__).parent
    dirs = [package.parent / "confluent_kafka.libs", package / ".dylibs", package]
    found: list[Path] = []
    for directory in dirs:
        for pattern in ("librdkafka*.so*", "librdkafka*.dylib"):
            found.extend(sorted(directory.glob(pattern)))
    return found


def load_library() -> ctypes.CDLL:
    """Load librdkafka (the wheel's copy first) and declare the functions we call."""
    import ctypes.util

    paths = [str(p) for p in _library_candidates()]
    system = ctypes.util.find_library("rdkafka")
    paths += [system] if system else []
    if not paths:
        raise BrokerError("librdkafka not found: is confluent-kafka installed?")
    lib = ctypes.CDLL(paths[0])
    for name, (restype, argtypes) in (_REQUIRED | _OPTIONAL).items():
        try:
            func = getattr(lib, name)
        except AttributeError:
            if name in _REQUIRED:
                raise BrokerError(f"{paths[0]} has no {name}: librdkafka too old") from None
            continue
        func.restype, func.argtypes = restype, argtypes
    return lib


def optional(lib: ctypes.CDLL, name: str) -> Callable[..., Any] | None:
    """The C function ``name`` when this librdkafka exports it, else None."""
    return getattr(lib, name, None)


def new_handle(lib: ctypes.CDLL) -> int:
    """Create the quiet producer handle that owns the mock cluster."""
    conf = lib.rd_kafka_conf_new()
    errstr = ctypes.create_string_buffer(512)
    # The handle never connects anywhere: keep librdkafka from logging about it.
    for key, value in (("client.id", "herald-embedded-kafka"), ("log_level", "3")):
        if lib.rd_kafka_conf_set(conf, key.encode(), value.encode(), errstr, len(errstr)):
            lib.rd_kafka_conf_destroy(conf)
            raise BrokerError(f"librdkafka config {key}: {errstr.value.decode()}")
    rk = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errstr, len(errstr))
    if not rk:
        lib.rd_kafka_conf_destroy(conf)  # rd_kafka_new owns conf only on success
        raise BrokerError(f"librdkafka: {errstr.value.decode()}")
    return int(rk)


def err2str(lib: ctypes.CDLL, err: int) -> str:
    text = lib.rd_kafka_err2str(err)
    return text.decode() if text else f"error {err}"

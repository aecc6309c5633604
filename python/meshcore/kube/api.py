"""The API server a kubeconfig names (or the pod's own service account): HTTP clients that carry
its TLS trust and credentials, made by lightkube."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError

__all__ = ["IN_CLUSTER", "KubeApi", "lightkube"]

IN_CLUSTER = "in-cluster"  # --kubernetes in-cluster: the service account mounted in the pod


def lightkube() -> Any:
    """The lightkube module, or a ConfigError saying which extra brings it."""
    try:
        import lightkube as module
    except ImportError:
        raise ConfigError(
            "the Kubernetes source and TokenReview need lightkube: pip install 'meshcore[kubernetes]'"
        ) from None
    return module


class KubeApi:
    """One API server. `kubeconfig` is a kubeconfig file (its current context) or "in-cluster"."""

    def __init__(self, kubeconfig: str | Path, *, timeout: float = 10.0, context: Optional[str] = None):
        lightkube()
        from lightkube.config.kubeconfig import KubeConfig
        from lightkube.core.exceptions import ConfigError as LightkubeConfigError

        for name in ("httpx2", "httpcore2"):  # a line per request (every watch) is noise at INFO
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        self.source = str(kubeconfig)
        self.timeout = timeout
        try:
            if self.source == IN_CLUSTER:
                config = KubeConfig.from_service_account()
            else:
                if not Path(self.source).is_file():
                    raise ConfigError(f"kubeconfig {self.source}: no such file")
                config = KubeConfig.from_file(self.source)
            self._config = config.get(context)
        except ConfigError:
            raise
        except (LightkubeConfigError, KeyError, OSError, ValueError, TypeError, AttributeError) as e:
            # KeyError: KUBERNETES_SERVICE_HOST unset outside a pod, or a context naming a missing cluster.
            reason = f"missing {e}" if isinstance(e, KeyError) else str(e) or type(e).__name__
            raise ConfigError(f"kubeconfig {self.source}: {reason}") from None
        if self._config is None or self._config.cluster is None or not self._config.cluster.server:
            raise ConfigError(f"kubeconfig {self.source}: no current context with a cluster server")
        self.server: str = self._config.cluster.server

    def _params(self, read_timeout: Optional[float]) -> dict[str, Any]:
        import httpx2
        from lightkube.config.client_adapter import ConnectionParams
        from lightkube.core.exceptions import ConfigError as LightkubeConfigError

        timeout = httpx2.Timeout(self.timeout, read=read_timeout)
        try:
            assert self._config is not None  # checked when the kubeconfig was read
            return ConnectionParams(timeout=timeout).httpx_params(self._config)
        except (LightkubeConfigError, OSError, ValueError) as e:  # a CA or client cert that does not load
            raise ConfigError(f"kubeconfig {self.source}: {e}") from None

    def async_client(self, read_timeout: Optional[float] = None) -> Any:
        """An httpx2.AsyncClient with base_url, TLS and credentials set (read_timeout: for watches)."""
        import httpx2

        return httpx2.AsyncClient(**self._params(read_timeout if read_timeout else self.timeout))

    def client(self) -> Any:
        """A blocking httpx2.Client with base_url, TLS and credentials set."""
        import httpx2

        return httpx2.Client(**self._params(self.timeout))

"""``automl dashboard``: optuna-dashboard on a study's storage.

optuna-dashboard already reads what a search writes (our journal files and RDB URLs), so the
command only finds the study's storage and hands it over; it is an optional extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from automl.errors import UserError

if TYPE_CHECKING:
    import optuna

__all__ = ["INSTALL", "require_dashboard", "serve"]

INSTALL = "pip install 'automl-recipes[dashboard]'"


def require_dashboard():
    """optuna-dashboard's ``run_server``; missing, a one-line error naming what to install."""
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise UserError(f"automl dashboard needs the optuna-dashboard package: {INSTALL}"
                        ) from None
    return run_server


def serve(study: optuna.Study, host: str, port: int) -> None:
    """Serve the dashboard for ``study``'s storage (every study in it) until Ctrl-C."""
    from automl.optuna_adapter import storage_of

    run_server = require_dashboard()
    try:
        run_server(storage_of(study), host=host, port=port)  # the one the study was read from
    except OSError as exc:  # the port is taken, or the host is not this machine's
        raise UserError(f"automl dashboard: cannot listen on {host}:{port} ({exc.strerror or exc})"
                        ) from None
    except KeyboardInterrupt:
        pass

"""The compose stack's MLflow users, from docker/.env on every start (run by mlflow-entrypoint.sh before the
server): the admin account and the study driver's non-admin account get the passwords the environment names.

MLflow itself creates the admin only once, on first start, and ignores later edits of its password; here the
environment is the source of truth, so rotating a password is: edit docker/.env, then `docker compose up -d`
(this container and the Ray head, whose login changed, are recreated). Run with the server's environment:
MLFLOW_AUTH_CONFIG_PATH (the auth database), MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD and
MLFLOW_DRIVER_USERNAME/PASSWORD.
"""

from __future__ import annotations

import os
import sys


def ensure_user(store, username: str, password: str, *, is_admin: bool) -> str:
    """Create ``username`` or set its password and role to these; returns what was done."""
    if not store.has_user(username, use_primary=True):
        store.create_user(username, password, is_admin=is_admin)
        return "created"
    changed = not store.authenticate_user(username, password, use_primary=True)
    store.update_user(username, password=password if changed else None, is_admin=is_admin)
    return "password updated" if changed else "unchanged"


def main() -> int:
    from mlflow.server.auth.config import read_auth_config
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    env = os.environ
    admin, driver = env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_DRIVER_USERNAME"]
    if admin == driver:
        print(f"docker/.env: MLFLOW_DRIVER_USERNAME must differ from the admin's ({admin}): the study driver gets "
              "no admin rights", file=sys.stderr)
        return 1
    store = SqlAlchemyStore()
    store.init_db(read_auth_config().database_uri)
    for name, password, is_admin in ((admin, env["MLFLOW_AUTH_ADMIN_PASSWORD"], True),
                                     (driver, env["MLFLOW_DRIVER_PASSWORD"], False)):
        print(f"MLflow user {name} ({'admin' if is_admin else 'study driver'}): "
              f"{ensure_user(store, name, password, is_admin=is_admin)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

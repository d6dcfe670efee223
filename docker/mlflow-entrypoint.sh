#!/bin/sh
# Start the compose stack's MLflow server: runs in PostgreSQL, artifacts in MinIO's bucket (served through this
# server, so Ray nodes need no S3 credentials), users through MLflow's basic-auth app. Everything secret comes
# from the environment (docker/.env); extra arguments go to `mlflow server`.
set -eu
: "${POSTGRES_USER:?}" "${POSTGRES_PASSWORD:?}" "${POSTGRES_DB:?}" "${MLFLOW_BUCKET:?}" "${MLFLOW_S3_ENDPOINT_URL:?}"
: "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}" "${MLFLOW_AUTH_ADMIN_USERNAME:?}" "${MLFLOW_AUTH_ADMIN_PASSWORD:?}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?}" "${MLFLOW_DRIVER_USERNAME:?}" "${MLFLOW_DRIVER_PASSWORD:?}"

# The admin's and the study driver's accounts follow docker/.env on every start (a password edited there is the
# password from now on; MLflow alone would keep the one of the first start).
python /usr/local/bin/mlflow-users.py

# The password goes into a URI: quote it so any character works.
MLFLOW_BACKEND_STORE_URI="$(python -c 'import os, urllib.parse as u; e = os.environ
print("postgresql://%s:%s@%s/%s" % (u.quote(e["POSTGRES_USER"], safe=""), u.quote(e["POSTGRES_PASSWORD"], safe=""),
      e.get("POSTGRES_HOST", "postgres:5432"), e["POSTGRES_DB"]))')"
export MLFLOW_BACKEND_STORE_URI

# Create the artifact bucket on first start (MinIO starts empty).
python - <<'PY'
import os

import boto3
from botocore.exceptions import ClientError

s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
bucket = os.environ["MLFLOW_BUCKET"]
try:
    s3.head_bucket(Bucket=bucket)
except ClientError:
    s3.create_bucket(Bucket=bucket)
    print(f"created bucket {bucket}")
PY

exec mlflow server \
    --host 0.0.0.0 --port 5000 \
    --app-name basic-auth \
    --serve-artifacts --artifacts-destination "s3://${MLFLOW_BUCKET}/artifacts" \
    "$@"

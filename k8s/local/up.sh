#!/usr/bin/env bash
# `make local`: the smoke sweep on a kind cluster with MinIO as the store, all on this machine.
#   kind cluster (created if missing) -> MinIO + dev-only Secret + bucket -> the CPU image loaded into kind ->
#   RBAC -> dataset uploaded to MinIO -> aquarium sweep submit --watch -> where the report is.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=${KIND_CLUSTER:-aquarium}
NS=aquarium
IMAGE=${IMAGE:-aquarium-sweep:cpu}
AQUARIUM=${AQUARIUM:-.venv/bin/aquarium}
PYTHON_BIN=${PYTHON_BIN:-.venv/bin/python}
PORT=${MINIO_LOCAL_PORT:-19000}
STORE=s3://aquarium/smoke
ENDPOINT=http://minio.$NS.svc:9000
SOURCE=s3://aquarium/datasets/smoke.zip

for tool in kind kubectl docker; do
  command -v "$tool" >/dev/null 2>&1 || { echo "make local: $tool not found: install it (kind: https://kind.sigs.k8s.io)" >&2; exit 1; }
done
kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER"
kubectl config use-context "kind-$CLUSTER" >/dev/null
kind load docker-image "$IMAGE" --name "$CLUSTER"

kubectl apply -f k8s/local/namespace.yaml -f k8s/local/minio-secret.yaml -f k8s/local/minio.yaml
kubectl -n "$NS" delete job minio-create-bucket --ignore-not-found >/dev/null
kubectl apply -f k8s/local/bucket-job.yaml
kubectl -n "$NS" rollout status deploy/minio --timeout=300s
kubectl -n "$NS" wait --for=condition=complete job/minio-create-bucket --timeout=300s

args=(--config smoke.yaml --store "$STORE" --source "$SOURCE" --endpoint "$ENDPOINT" --image "$IMAGE")
"$AQUARIUM" sweep plan "${args[@]}" --out build/k8s-local
kubectl apply -f build/k8s-local/rbac.yaml

# The submitter (this machine) reaches MinIO through a port-forward, the pods through the Service.
kubectl -n "$NS" port-forward svc/minio "$PORT:9000" >/dev/null 2>&1 &
pf=$!
trap 'kill $pf 2>/dev/null || true' EXIT
sleep 3
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_DEFAULT_REGION=us-east-1
AWS_ACCESS_KEY_ID=$(kubectl -n "$NS" get secret aquarium-s3 -o jsonpath='{.data.AWS_ACCESS_KEY_ID}' | base64 -d)
AWS_SECRET_ACCESS_KEY=$(kubectl -n "$NS" get secret aquarium-s3 -o jsonpath='{.data.AWS_SECRET_ACCESS_KEY}' | base64 -d)
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY

zip=${DATASET:-}
if [ -z "$zip" ]; then  # no dataset given: a small generated one (the tests' generator)
  zip=build/smoke-dataset.zip
  mkdir -p build
  "$PYTHON_BIN" -c "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; \
from conftest import make_dataset; make_dataset(Path(sys.argv[1]))" "$zip"
fi
"$PYTHON_BIN" -c "import boto3, sys; boto3.client('s3').upload_file(sys.argv[1], 'aquarium', 'datasets/smoke.zip')" "$zip"

"$AQUARIUM" sweep submit "${args[@]}" --watch
echo "report: $STORE/sweeps/smoke/report/report.html"
echo "  fetch it: kubectl -n $NS port-forward svc/minio $PORT:9000 &  then"
echo "  AWS_ENDPOINT_URL=http://127.0.0.1:$PORT aws s3 cp $STORE/sweeps/smoke/report/ ./report --recursive"

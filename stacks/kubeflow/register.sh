#!/usr/bin/env bash
# Register the labelspace ZenML stack for Kubeflow Pipelines (or, with ORCHESTRATOR=kubernetes, for
# ZenML's Kubernetes orchestrator) on a real cluster. Run against the team's ZenML server
# (`zenml login https://zenml.example.com`), from an environment that has the integrations
# (README.md in this folder: kfp cannot be installed into the project's .venv).
# Every value comes from the environment; nothing here is a secret.
set -euo pipefail

: "${KUBE_CONTEXT:?the kubectl context of the cluster}"
: "${KFP_HOST:?the Kubeflow Pipelines API, e.g. https://kubeflow.example.com/pipeline}"
: "${REGISTRY:?the container registry, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/labelspace}"
: "${ARTIFACT_BUCKET:?the S3 path of ZenML's artifact store, e.g. s3://labelspace-zenml}"
: "${MLFLOW_TRACKING_URI:?the team's MLflow server}"
S3_ENDPOINT="${S3_ENDPOINT:-}"            # an S3-compatible store (MinIO, the team server's SeaweedFS); empty for AWS
NAMESPACE="${NAMESPACE:-kubeflow}"
ORCHESTRATOR="${ORCHESTRATOR:-kubeflow}"  # or kubernetes
STACK="${STACK:-labelspace-$ORCHESTRATOR}"

# S3 credentials for the artifact store, kept in a ZenML secret (not in the stack's configuration).
# They reach `zenml secret` in a file of mode 600 (--values=@FILE, written by the shell's own printf),
# never on a command line, where every process on the machine could read them.
: "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}"
values=$(mktemp)   # mode 600
trap 'rm -f "$values"' EXIT
printf '{"aws_access_key_id": "%s", "aws_secret_access_key": "%s"}\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" \
  > "$values"
zenml secret create labelspace_s3 --values="@$values" 2>/dev/null \
  || zenml secret update labelspace_s3 --values="@$values"

if [ -n "$S3_ENDPOINT" ]; then
  zenml artifact-store register labelspace_s3_store --flavor=s3 --path="$ARTIFACT_BUCKET" \
    --key='{{labelspace_s3.aws_access_key_id}}' --secret='{{labelspace_s3.aws_secret_access_key}}' \
    --client_kwargs="{\"endpoint_url\": \"$S3_ENDPOINT\"}"
else
  zenml artifact-store register labelspace_s3_store --flavor=s3 --path="$ARTIFACT_BUCKET" \
    --key='{{labelspace_s3.aws_access_key_id}}' --secret='{{labelspace_s3.aws_secret_access_key}}'
fi
zenml container-registry register labelspace_registry --flavor=default --uri="$REGISTRY"
zenml image-builder register labelspace_docker --flavor=local   # builds with the local Docker daemon
zenml experiment-tracker register labelspace_mlflow_tracker_k8s --flavor=mlflow \
  --tracking_uri="$MLFLOW_TRACKING_URI" \
  --tracking_username="${MLFLOW_TRACKING_USERNAME:?}" --tracking_password="${MLFLOW_TRACKING_PASSWORD:?}"
zenml model-registry register labelspace_mlflow_registry_k8s --flavor=mlflow

if [ "$ORCHESTRATOR" = kubeflow ]; then
  zenml orchestrator register labelspace_kubeflow --flavor=kubeflow \
    --kubernetes_context="$KUBE_CONTEXT" --kubeflow_hostname="$KFP_HOST" --kubeflow_namespace="$NAMESPACE"
  ORCH_NAME=labelspace_kubeflow
else
  zenml orchestrator register labelspace_kubernetes --flavor=kubernetes \
    --kubernetes_context="$KUBE_CONTEXT" --kubernetes_namespace="$NAMESPACE"
  ORCH_NAME=labelspace_kubernetes
fi

zenml stack register "$STACK" -o "$ORCH_NAME" -a labelspace_s3_store -c labelspace_registry \
  -i labelspace_docker -e labelspace_mlflow_tracker_k8s -r labelspace_mlflow_registry_k8s
zenml stack describe "$STACK"

"""The query service on Kubernetes: a Deployment and a Service for ``mesh serve``, written by
``mesh deploy helm`` beside the Dagster charts' values (``mesh-serve.yaml``, plain manifests:
Dagster's charts have no place for another workload).

The service is the only workload people reach that holds the warehouse's read credentials
(the mesh's secret, as the code servers hold it); analysts' tools hold a token each. Nothing
secret is written here, only references:

- the mesh's secret (``envSecrets`` of the code servers): the catalog, the warehouse and the
  salt of masked personal data;
- ``mesh-serve-tls``, a ``kubernetes.io/tls`` secret: the service's certificate (it listens on
  every address of its pod, which it does only with TLS);
- ``mesh-serve-state``, a PersistentVolumeClaim: the issued tokens (hashed) and the audit log,
  kept across restarts (``kubectl exec deploy/mesh-serve -- mesh token create user:carol``).
"""

from __future__ import annotations

from typing import Any

SERVE_PORT = 5433
HEALTH_PORT = 6433
TLS_SECRET = "mesh-serve-tls"
STATE_CLAIM = "mesh-serve-state"
TLS_DIR = "/etc/mesh/tls"
STATE_DIR = "/var/lib/mesh-serve"


def serve_manifests(
    image: str, secret: str, *, workdir: str, replicas: int = 1
) -> list[dict[str, Any]]:
    """The Deployment and the Service of the query service."""
    labels = {"app.kubernetes.io/name": "mesh-serve", "app.kubernetes.io/part-of": "mesh"}
    env = [
        {"name": "MESH_PROFILE", "value": "production"},
        {"name": "MESH_ROOT", "value": workdir},
        {"name": "MESH_SERVE__HOST", "value": "0.0.0.0"},
        {"name": "MESH_SERVE__PORT", "value": str(SERVE_PORT)},
        {"name": "MESH_SERVE__HEALTH_PORT", "value": str(HEALTH_PORT)},
        {"name": "MESH_SERVE__TLS__CERTIFICATE", "value": f"{TLS_DIR}/tls.crt"},
        {"name": "MESH_SERVE__TLS__KEY", "value": f"{TLS_DIR}/tls.key"},
        {"name": "MESH_SERVE__TOKENS_FILE", "value": f"{STATE_DIR}/tokens.json"},
        {"name": "MESH_STATE_DIR", "value": STATE_DIR},
    ]

    def probe(path: str) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": HEALTH_PORT}, "periodSeconds": 10}

    container = {
        "name": "mesh-serve",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "workingDir": workdir,
        "command": ["mesh", "serve"],
        "ports": [
            {"name": "postgresql", "containerPort": SERVE_PORT},
            {"name": "health", "containerPort": HEALTH_PORT},
        ],
        "env": env,
        "envFrom": [{"secretRef": {"name": secret}}],
        "volumeMounts": [
            {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
            {"name": "state", "mountPath": STATE_DIR},
        ],
        "readinessProbe": probe("/readyz"),
        "livenessProbe": probe("/healthz"),
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "mesh-serve", "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # running queries drain on SIGTERM (serve.drain_seconds, 30 s by default)
                    "terminationGracePeriodSeconds": 45,
                    "containers": [container],
                    "volumes": [
                        {"name": "tls", "secret": {"secretName": TLS_SECRET}},
                        {"name": "state", "persistentVolumeClaim": {"claimName": STATE_CLAIM}},
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "mesh-serve", "labels": labels},
        "spec": {
            "selector": labels,
            "ports": [{"name": "postgresql", "port": SERVE_PORT, "targetPort": "postgresql"}],
        },
    }
    return [deployment, service]

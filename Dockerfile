# The training image for Ray on Kubernetes (k8s/rayjob.yaml): the official Ray image of the Ray version we
# test, plus PyTorch's CUDA build and this package with its dali and deepspeed extras. Build from the
# repository root (README.md, "Run on Kubernetes"):
#   docker build -t REGISTRY/eg3d-train:0.1.0 . && docker push REGISTRY/eg3d-train:0.1.0
# It sits at the root because its build context is the whole project, and a root .dockerignore is the
# one that every builder (docker, buildah, kaniko) reads.
ARG RAY_VERSION=2.60.0
# The Ray image's CUDA, named rather than -gpu (an alias for an older CUDA 12 build, cu121): keep it in step
# with the CUDA of the torch wheel (TORCH_INDEX_URL), since DeepSpeed compiles its ops against the image's.
# Not verified against a registry here: check that the tag exists for this Ray version.
ARG CUDA=cu128
FROM rayproject/ray:${RAY_VERSION}-py311-${CUDA}
# checkov:skip=CKV_DOCKER_2: Ray's pods have KubeRay's readiness and liveness probes; a HEALTHCHECK is unused there

ARG RAY_VERSION
ARG TORCH_VERSION=2.13.0
# PyTorch's wheel index for the image's CUDA (the `whl/cu128` index that PyTorch's install selector
# shows). Left empty, torch comes from the default index, whose Linux x86_64 wheels are CUDA builds too.
ARG TORCH_INDEX_URL=""

# The base image's user `ray` (uid 1000, group users, gid 100) owns its Python environment.
USER 1000:100
WORKDIR /home/ray/eg3d-train

# The CUDA build of torch first, so that resolving the project below keeps it.
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"

COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 tests/constraints.txt tests/constraints.txt
COPY --chown=1000:100 eg3d eg3d
COPY --chown=1000:100 dataloading dataloading
COPY --chown=1000:100 cluster cluster
COPY --chown=1000:100 monitoring monitoring
# Ray stays the base image's version; the object-storage stack is held to the versions the tests use.
RUN pip install --no-cache-dir -c tests/constraints.txt "ray[default,train]==${RAY_VERSION}" ".[dali,deepspeed]"

# Outside the source folder, so that this imports the installed package.
WORKDIR /home/ray
RUN python -c "import eg3d.train, eg3d.training.loop, cluster.launch, dataloading.shard_reader, monitoring.exporter, deepspeed, nvidia.dali"

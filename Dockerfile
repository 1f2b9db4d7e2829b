# clipsearch as a container, for `docker compose run --rm clipsearch ...` and
# `docker compose up -d serve` beside the qdrant service. torch is installed first, on its own, so that the project's
# `torch>=...` requirement is already met. The default is PyTorch's CPU-only wheel
# index: the compose service reserves no GPU, and PyPI's default Linux build carries
# several GB of CUDA libraries. For a GPU image: --build-arg TORCH_INDEX_URL= (PyPI)
# or a CUDA wheel index, and give the service the GPU.
FROM python:3.11-slim
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /app
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"; \
    else pip install "$TORCH_SPEC"; fi
COPY pyproject.toml README.md ./
COPY clipsearch ./clipsearch
COPY ingest ./ingest
COPY search ./search
COPY finetune ./finetune
COPY serve ./serve
RUN pip install .
# Models and photos are mounted, never baked in.
ENV CLIPSEARCH_MODEL=/models/clip
EXPOSE 8765
ENTRYPOINT ["clipsearch"]
CMD ["--help"]
